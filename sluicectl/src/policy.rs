//! `sluicectl policy list | get`: network policy as enforced on this
//! node's pods, with identities and policies by name.

use crate::render::{self, Output, table_row};
use anyhow::{Context, Result};
use serde::Serialize;
use sluice_tc_datapath::layout::{self, Direction, proto_name};
use sluice_tc_datapath::maps::Maps;
use sluice_tc_datapath::maps::policy::RuleEntry;
use std::net::IpAddr;

/// An identity as the node's names map spells it, else its number.
fn identity_name(maps: &Maps, id: u32) -> String {
    match id {
        layout::ID_HOST => "host".into(),
        layout::ID_WORLD => "world".into(),
        _ => maps
            .observe()
            .name(layout::NAME_IDENTITY, id)
            .map_or_else(|| id.to_string(), |n| format!("{id} ({n})")),
    }
}

fn policy_name(maps: &Maps, id: u32) -> String {
    maps.observe()
        .name(layout::NAME_POLICY, id)
        .unwrap_or_else(|| id.to_string())
}

#[derive(Serialize)]
pub struct IsolatedRow {
    pub endpoint: u32,
    /// Its addresses, comma-separated.
    pub addresses: String,
    pub identity: String,
    /// The policy isolating it for ingress, "-" when none.
    pub ingress: String,
    pub egress: String,
    /// Rule entries in the maps.
    pub entries: usize,
}

table_row!(
    IsolatedRow,
    ["ENDPOINT", "ADDRESSES", "IDENTITY", "INGRESS", "EGRESS", "ENTRIES"],
    |r| [r.endpoint, r.addresses, r.identity, r.ingress, r.egress, r.entries]
);

/// Every pod some policy isolates.
pub fn list(maps: &Maps) -> Result<Vec<IsolatedRow>> {
    let eps = maps.endpoints().entries()?;
    let rules = maps.policy().rule_entries(None)?;
    let mut rows = Vec::new();
    for e in maps.policy().endpoint_policies()? {
        let v = e.state;
        let by = |flag: u8, pol: u32| {
            if v.flags & flag == 0 {
                "-".to_string()
            } else {
                policy_name(maps, pol)
            }
        };
        let addresses: Vec<String> = eps
            .iter()
            .filter(|a| a.endpoint_id == e.endpoint_id)
            .map(|a| a.addr.to_string())
            .collect();
        rows.push(IsolatedRow {
            endpoint: e.endpoint_id,
            addresses: addresses.join(","),
            identity: identity_name(maps, v.identity),
            ingress: by(layout::POLICY_F_INGRESS, v.ingress_policy),
            egress: by(layout::POLICY_F_EGRESS, v.egress_policy),
            entries: rules.iter().filter(|r| r.rule.endpoint_id == e.endpoint_id).count(),
        });
    }
    Ok(rows)
}

#[derive(Serialize)]
pub struct RuleRow {
    /// "ingress" or "egress".
    pub direction: &'static str,
    /// The peer identity, "*" for anyone.
    pub peer: String,
    /// "*" for every protocol.
    pub proto: String,
    /// A port, a range "lo-hi", or "*".
    pub ports: String,
    pub policy: String,
}

table_row!(RuleRow, ["DIRECTION", "PEER", "PROTO", "PORTS", "POLICY"], |r| [
    r.direction,
    r.peer,
    r.proto,
    r.ports,
    r.policy
]);

/// The rules enforced on one pod.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointRules {
    pub endpoint: u32,
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    pub rules: Vec<RuleRow>,
}

fn rule_row(maps: &Maps, e: &RuleEntry) -> RuleRow {
    let m = &e.rule;
    let ports = match e.prefix_len {
        layout::POLICY_BITS_ANY_PROTO | layout::POLICY_BITS_ANY_PORT => "*".to_string(),
        len => {
            let lo = u16::from_be(m.port);
            let span = 1u32 << (layout::POLICY_BITS_EXACT - len);
            if span == 1 {
                lo.to_string()
            } else {
                format!("{lo}-{}", u32::from(lo) + span - 1)
            }
        }
    };
    RuleRow {
        direction: if m.dir == Direction::Ingress as u8 {
            "ingress"
        } else {
            "egress"
        },
        peer: if m.identity == layout::ID_ANY {
            "*".into()
        } else {
            identity_name(maps, m.identity)
        },
        proto: if e.prefix_len == layout::POLICY_BITS_ANY_PROTO {
            "*".into()
        } else {
            proto_name(m.proto)
        },
        ports,
        policy: policy_name(maps, e.policy),
    }
}

pub fn get(maps: &Maps, address: IpAddr) -> Result<EndpointRules> {
    let ep = maps
        .endpoints()
        .get(address)?
        .with_context(|| format!("no pod with address {address} on this node"))?;
    let id = ep.endpoint_id;
    let pol = maps.policy().endpoint_policy(id)?;
    let isolated = |flag: u8| pol.is_some_and(|p| p.flags & flag != 0);
    Ok(EndpointRules {
        endpoint: id,
        ingress_isolated: isolated(layout::POLICY_F_INGRESS),
        egress_isolated: isolated(layout::POLICY_F_EGRESS),
        rules: maps
            .policy()
            .rule_entries(Some(id))?
            .iter()
            .map(|e| rule_row(maps, e))
            .collect(),
    })
}

impl EndpointRules {
    pub fn print(&self, out: Output) -> Result<()> {
        if out == Output::Json {
            return render::record(self, out);
        }
        let word = |on: bool| {
            if on {
                "isolated (what is listed is allowed)"
            } else {
                "unrestricted"
            }
        };
        println!(
            "endpoint {}: ingress {}, egress {}",
            self.endpoint,
            word(self.ingress_isolated),
            word(self.egress_isolated)
        );
        render::rows(&self.rules, out)
    }
}
