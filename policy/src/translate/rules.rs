//! One rule of a policy, read once: its peers as identities and its ports;
//! then, for each pod the policy selects, the datapath rules it makes.

use super::{Desired, Ident, PodInfo, proto};
use k8s_openapi::api::networking::v1::NetworkPolicyPort;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_tc_datapath::layout::{Direction, ID_ANY};
use sluice_tc_datapath::maps::policy::{PortRange, Rule};
use std::collections::{BTreeMap, BTreeSet};

/// Peers of a rule, as identities.
pub(super) enum Peers {
    Any,
    Some { pods: BTreeSet<u32>, cidrs: BTreeSet<u32> },
}

/// One port entry of a rule.
pub(super) struct RulePort {
    pub proto: u8,
    pub sel: PortSel,
}

pub(super) enum PortSel {
    /// Stands for a list whose every entry was invalid: matches nothing.
    Nothing,
    Any,
    Range(PortRange),
    Named(String),
}

/// The ports of a rule; empty = every port of every protocol.
pub(super) fn ports(ports: Option<&[NetworkPolicyPort]>, d: &mut Desired, what: &str) -> Vec<RulePort> {
    let mut out = Vec::new();
    for p in ports.unwrap_or_default() {
        let Some(proto) = proto(p.protocol.as_deref()) else {
            d.warnings
                .push(format!("{what}: protocol {:?} is not TCP, UDP or SCTP", p.protocol));
            continue;
        };
        let sel = match (&p.port, p.end_port) {
            (None, None) => PortSel::Any,
            (Some(IntOrString::Int(n)), end) => {
                let lo = u16::try_from(*n).ok().filter(|n| *n > 0);
                let hi = match end {
                    Some(e) => u16::try_from(e).ok(),
                    None => lo,
                };
                match (lo, hi) {
                    (Some(first), Some(last)) if first <= last => PortSel::Range(PortRange { first, last }),
                    _ => {
                        d.warnings
                            .push(format!("{what}: port {n}..{end:?} is not a port range"));
                        continue;
                    }
                }
            }
            (Some(IntOrString::String(name)), None) => PortSel::Named(name.clone()),
            (port, end) => {
                d.warnings.push(format!("{what}: port {port:?} with endPort {end:?}"));
                continue;
            }
        };
        out.push(RulePort { proto, sel });
    }
    // A list of ports that were all invalid allows nothing, not everything.
    if out.is_empty() && ports.is_some_and(|p| !p.is_empty()) {
        return vec![RulePort {
            proto: 0,
            sel: PortSel::Nothing,
        }];
    }
    out
}

/// One rule of one policy, for one selected pod, as datapath rules.
pub(super) fn expand(
    dir: Direction,
    peers: &Peers,
    ports: &[RulePort],
    subject: &PodInfo,
    idents: &BTreeMap<u32, Ident>,
    policy: u32,
    out: &mut BTreeSet<Rule>,
) {
    let ids: Vec<u32> = match peers {
        Peers::Any => vec![ID_ANY],
        Peers::Some { pods, cidrs } => pods.iter().chain(cidrs.iter()).copied().collect(),
    };
    let rule = |identity, proto, ports| Rule {
        dir,
        identity,
        proto,
        ports,
        policy,
    };
    if ports.is_empty() {
        out.extend(ids.iter().map(|id| rule(*id, 0, None)));
        return;
    }
    for p in ports {
        match &p.sel {
            PortSel::Nothing => {}
            PortSel::Any => out.extend(ids.iter().map(|id| rule(*id, p.proto, None))),
            PortSel::Range(r) => out.extend(ids.iter().map(|id| rule(*id, p.proto, Some(*r)))),
            PortSel::Named(name) if dir == Direction::Ingress => {
                for np in subject
                    .ports
                    .iter()
                    .filter(|np| np.name == *name && np.proto == p.proto)
                {
                    out.extend(ids.iter().map(|id| rule(*id, p.proto, Some(PortRange::one(np.number)))));
                }
            }
            PortSel::Named(name) => {
                // The destination's port: what the peer identities' pods
                // give the name; ipBlocks have none.
                for (id, ident) in idents {
                    let selected = match peers {
                        Peers::Any => true,
                        Peers::Some { pods: ids, .. } => ids.contains(id),
                    };
                    if !selected {
                        continue;
                    }
                    for np in ident.ports.keys().filter(|np| np.name == *name && np.proto == p.proto) {
                        out.insert(rule(*id, p.proto, Some(PortRange::one(np.number))));
                    }
                }
            }
        }
    }
}
