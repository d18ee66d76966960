//! NetworkPolicy v1 semantics, turned into what the datapath enforces:
//! identities for label sets and CIDRs, the ipcache, and for every pod some
//! policy selects, the allow rules of each direction it is isolated in.
//!
//! The rules of the API, as this module applies them:
//! - a policy selects the pods of its namespace that match `podSelector`
//!   (empty or missing: all of them) and isolates them in each of its
//!   `policyTypes`; without `policyTypes` it isolates for Ingress, and for
//!   Egress too when it has egress rules;
//! - a pod no policy isolates in a direction is unrestricted there; what
//!   several policies allow adds up;
//! - a rule allows when one of its peers matches (no peers: anyone) and one
//!   of its ports matches (no ports: every port of every protocol);
//! - a peer is pods (podSelector alone: of the policy's namespace;
//!   namespaceSelector alone: all pods of the matching namespaces; both:
//!   the matching pods of the matching namespaces) or an ipBlock with its
//!   excepts, which matches pod addresses too;
//! - a port is a protocol (TCP when missing) with a number, a number range
//!   (`endPort`), a name, or nothing (every port); a name is the selected
//!   pod's container port of that name and protocol for ingress, the
//!   destination pod's for egress, and matches nothing for an ipBlock.
//!
//! Where identities stand for several pods, an egress named port takes the
//! union of the numbers those pods give the name (pods with the same labels
//! normally run the same containers).

use crate::selector::{Labels, matches};
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_tc_datapath::layout::{Direction, ID_ANY, ID_FIRST_ALLOCATED};
use sluice_tc_datapath::maps::Rule;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The label every namespace carries, set by the API server.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// What one node's datapath must hold, for the whole cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Identity -> what it stands for (for the tools).
    pub identities: BTreeMap<u32, String>,
    /// Policy id -> "namespace/name".
    pub policies: BTreeMap<u32, String>,
    /// Every pod address -> its identity.
    pub ipcache: BTreeMap<IpAddr, u32>,
    /// Every prefix an ipBlock names -> its identity.
    pub cidrs: BTreeMap<IpNetwork, u32>,
    /// "namespace/name" -> the policy of every pod some policy selects.
    pub endpoints: BTreeMap<String, EndpointPolicy>,
    /// What was left out, and why (an invalid CIDR or port): a rule that
    /// cannot be read allows nothing, its policy still isolates.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    pub ips: Vec<IpAddr>,
    pub identity: u32,
    /// A policy isolating the pod for ingress / egress (the first by name).
    pub ingress: Option<u32>,
    pub egress: Option<u32>,
    pub rules: BTreeSet<Rule>,
}

/// Ids handed out once and kept while in use, so that an update rewrites
/// only what changed.
#[derive(Debug, Default)]
struct Allocator<K: Ord + Clone> {
    ids: BTreeMap<K, u32>,
    free: Vec<u32>,
    next: u32,
}

impl<K: Ord + Clone> Allocator<K> {
    fn new(first: u32) -> Self {
        Allocator {
            ids: BTreeMap::new(),
            free: Vec::new(),
            next: first,
        }
    }

    fn id(&mut self, k: &K) -> u32 {
        if let Some(id) = self.ids.get(k) {
            return *id;
        }
        let id = self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        self.ids.insert(k.clone(), id);
        id
    }

    /// Forget every key not in `live`; their ids can be reused.
    fn retain(&mut self, live: &BTreeSet<K>) {
        let dead: Vec<K> = self.ids.keys().filter(|k| !live.contains(*k)).cloned().collect();
        for k in dead {
            if let Some(id) = self.ids.remove(&k) {
                self.free.push(id);
            }
        }
    }
}

/// A label set: what an identity stands for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct IdentityKey {
    namespace: String,
    pod_labels: Labels,
    ns_labels: Labels,
}

impl IdentityKey {
    fn name(&self) -> String {
        let labels: Vec<String> = self.pod_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{} {}", self.namespace, labels.join(","))
    }
}

struct PodInfo {
    key: String,
    identity: u32,
    id_key: IdentityKey,
    ips: Vec<IpAddr>,
    /// (name, protocol, number) of every named container port.
    ports: Vec<(String, u8, u16)>,
}

/// Peers of a rule, as identities.
enum Peers {
    Any,
    Some { pods: BTreeSet<u32>, cidrs: BTreeSet<u32> },
}

/// (protocol, which ports) of a rule; empty = every port of every protocol.
type Ports = Vec<(u8, PortSel)>;

enum PortSel {
    /// Stands for a list whose every entry was invalid: matches nothing.
    Nothing,
    Any,
    Range(u16, u16),
    Named(String),
}

/// Turns cluster objects into `Desired`, keeping identity and policy ids
/// stable from one call to the next.
pub struct Translator {
    identities: Allocator<IdentityKey>,
    cidrs: Allocator<IpNetwork>,
    policies: Allocator<(String, String)>,
}

impl Default for Translator {
    fn default() -> Self {
        Translator {
            identities: Allocator::new(ID_FIRST_ALLOCATED),
            // CIDR identities from a range of their own, so an id says what it is.
            cidrs: Allocator::new(1 << 24),
            policies: Allocator::new(1),
        }
    }
}

fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

fn proto(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        "SCTP" => Some(PROTO_SCTP),
        _ => None,
    }
}

fn normalized(n: IpNetwork) -> IpNetwork {
    IpNetwork::new(n.network(), n.prefix()).expect("a prefix of a valid network is valid")
}

fn within(inner: &IpNetwork, outer: &IpNetwork) -> bool {
    inner.is_ipv4() == outer.is_ipv4() && inner.prefix() >= outer.prefix() && outer.contains(inner.network())
}

impl Translator {
    pub fn new() -> Translator {
        Translator::default()
    }

    /// The objects by reference, from wherever the caller keeps them (the
    /// agent's store: nothing is cloned for a translation).
    pub fn translate<'a>(
        &mut self,
        namespaces: impl IntoIterator<Item = &'a Namespace>,
        pods: impl IntoIterator<Item = &'a Pod>,
        policies: impl IntoIterator<Item = &'a NetworkPolicy>,
    ) -> Desired {
        let policies: Vec<&NetworkPolicy> = policies.into_iter().collect();
        let mut d = Desired::default();
        let ns_labels: BTreeMap<String, Labels> = namespaces
            .into_iter()
            .filter_map(|n| {
                n.metadata
                    .name
                    .clone()
                    .map(|name| (name, n.metadata.labels.clone().unwrap_or_default()))
            })
            .collect();

        // Pods that have addresses and are not done: each gets its identity.
        let mut infos = Vec::new();
        for p in pods {
            let spec = p.spec.as_ref();
            let status = p.status.as_ref();
            if spec.and_then(|s| s.host_network) == Some(true)
                || matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
            {
                continue;
            }
            let namespace = namespace_of(&p.metadata);
            let mut ips: Vec<IpAddr> = status
                .and_then(|s| s.pod_ips.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.parse().ok())
                .collect();
            if ips.is_empty()
                && let Some(ip) = status.and_then(|s| s.pod_ip.as_ref()).and_then(|i| i.parse().ok())
            {
                ips.push(ip);
            }
            let mut nsl = ns_labels.get(&namespace).cloned().unwrap_or_default();
            nsl.insert(NAMESPACE_NAME_LABEL.into(), namespace.clone());
            let id_key = IdentityKey {
                namespace: namespace.clone(),
                pod_labels: p.metadata.labels.clone().unwrap_or_default(),
                ns_labels: nsl,
            };
            let ports = spec
                .into_iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter().flatten())
                .filter_map(|cp| {
                    let name = cp.name.clone()?;
                    Some((
                        name,
                        proto(cp.protocol.as_deref())?,
                        u16::try_from(cp.container_port).ok()?,
                    ))
                })
                .collect();
            infos.push(PodInfo {
                key: format!("{namespace}/{}", p.metadata.name.clone().unwrap_or_default()),
                identity: self.identities.id(&id_key),
                id_key,
                ips,
                ports,
            });
        }
        let live: BTreeSet<IdentityKey> = infos.iter().map(|i| i.id_key.clone()).collect();
        self.identities.retain(&live);
        for i in &infos {
            d.identities.insert(i.identity, i.id_key.name());
            for ip in &i.ips {
                d.ipcache.insert(*ip, i.identity);
            }
        }

        // Every prefix of every ipBlock, excepts included, is an identity.
        let mut prefixes = BTreeSet::new();
        for pol in &policies {
            for peer in all_peers(pol) {
                if let Some(b) = &peer.ip_block {
                    for c in std::iter::once(&b.cidr).chain(b.except.iter().flatten()) {
                        if let Ok(n) = c.parse::<IpNetwork>() {
                            prefixes.insert(normalized(n));
                        }
                    }
                }
            }
        }
        self.cidrs.retain(&prefixes);
        for n in &prefixes {
            d.cidrs.insert(*n, self.cidrs.id(n));
        }

        let mut sorted = policies;
        sorted.sort_by_key(|p| (namespace_of(&p.metadata), p.metadata.name.clone()));
        let live: BTreeSet<(String, String)> = sorted
            .iter()
            .map(|p| (namespace_of(&p.metadata), p.metadata.name.clone().unwrap_or_default()))
            .collect();
        self.policies.retain(&live);
        for pol in sorted {
            self.policy(pol, &infos, &mut d);
        }
        d
    }

    fn policy(&mut self, pol: &NetworkPolicy, pods: &[PodInfo], d: &mut Desired) {
        let ns = namespace_of(&pol.metadata);
        let name = pol.metadata.name.clone().unwrap_or_default();
        let id = self.policies.id(&(ns.clone(), name.clone()));
        d.policies.insert(id, format!("{ns}/{name}"));
        let Some(spec) = &pol.spec else { return };
        let types: Vec<&str> = match &spec.policy_types {
            Some(t) if !t.is_empty() => t.iter().map(String::as_str).collect(),
            _ if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) => vec!["Ingress", "Egress"],
            _ => vec!["Ingress"],
        };
        let selector = spec.pod_selector.clone().unwrap_or_default();
        let subjects: Vec<&PodInfo> = pods
            .iter()
            .filter(|p| p.id_key.namespace == ns && matches(&selector, &p.id_key.pod_labels))
            .collect();
        let what = format!("policy {ns}/{name}");
        // Each rule read once, applied to every subject.
        let mut rules: Vec<(Direction, Peers, Ports)> = Vec::new();
        if types.contains(&"Ingress") {
            for r in spec.ingress.iter().flatten() {
                let peers = self.peers(&ns, r.from.as_deref(), pods, d, &what);
                rules.push((Direction::Ingress, peers, ports(r.ports.as_deref(), d, &what)));
            }
        }
        if types.contains(&"Egress") {
            for r in spec.egress.iter().flatten() {
                let peers = self.peers(&ns, r.to.as_deref(), pods, d, &what);
                rules.push((Direction::Egress, peers, ports(r.ports.as_deref(), d, &what)));
            }
        }
        for s in subjects {
            let ep = d.endpoints.entry(s.key.clone()).or_insert_with(|| EndpointPolicy {
                ips: s.ips.clone(),
                identity: s.identity,
                ..Default::default()
            });
            if types.contains(&"Ingress") {
                ep.ingress.get_or_insert(id);
            }
            if types.contains(&"Egress") {
                ep.egress.get_or_insert(id);
            }
            for (dir, peers, ports) in &rules {
                expand(*dir, peers, ports, s, pods, id, &mut ep.rules);
            }
        }
    }

    fn peers(
        &mut self,
        policy_ns: &str,
        peers: Option<&[NetworkPolicyPeer]>,
        pods: &[PodInfo],
        d: &mut Desired,
        what: &str,
    ) -> Peers {
        let Some(peers) = peers.filter(|p| !p.is_empty()) else {
            return Peers::Any;
        };
        let (mut ids, mut cidrs) = (BTreeSet::new(), BTreeSet::new());
        for peer in peers {
            if let Some(b) = &peer.ip_block {
                let Ok(block) = b.cidr.parse::<IpNetwork>().map(normalized) else {
                    d.warnings.push(format!("{what}: ipBlock {:?} is not a CIDR", b.cidr));
                    continue;
                };
                let excepts: Vec<IpNetwork> = b
                    .except
                    .iter()
                    .flatten()
                    .filter_map(|e| e.parse::<IpNetwork>().ok().map(normalized))
                    .collect();
                for (n, id) in &d.cidrs {
                    if within(n, &block) && !excepts.iter().any(|e| within(n, e)) {
                        cidrs.insert(*id);
                    }
                }
                continue;
            }
            for p in pods {
                let ns_ok = match &peer.namespace_selector {
                    Some(sel) => matches(sel, &p.id_key.ns_labels),
                    None => p.id_key.namespace == policy_ns,
                };
                let pod_ok = peer
                    .pod_selector
                    .as_ref()
                    .is_none_or(|sel| matches(sel, &p.id_key.pod_labels));
                if ns_ok && pod_ok {
                    ids.insert(p.identity);
                }
            }
        }
        Peers::Some { pods: ids, cidrs }
    }
}

fn all_peers(pol: &NetworkPolicy) -> impl Iterator<Item = &NetworkPolicyPeer> {
    let spec = pol.spec.as_ref();
    let ing = spec
        .and_then(|s| s.ingress.as_ref())
        .into_iter()
        .flatten()
        .flat_map(|r| r.from.iter().flatten());
    let eg = spec
        .and_then(|s| s.egress.as_ref())
        .into_iter()
        .flatten()
        .flat_map(|r| r.to.iter().flatten());
    ing.chain(eg)
}

/// The ports of a rule; empty = every port of every protocol.
fn ports(ports: Option<&[NetworkPolicyPort]>, d: &mut Desired, what: &str) -> Ports {
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
                    (Some(lo), Some(hi)) if lo <= hi => PortSel::Range(lo, hi),
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
        out.push((proto, sel));
    }
    // A list of ports that were all invalid allows nothing, not everything.
    if out.is_empty() && ports.is_some_and(|p| !p.is_empty()) {
        return vec![(0, PortSel::Nothing)];
    }
    out
}

/// One rule of one policy, for one selected pod, as datapath rules.
fn expand(
    dir: Direction,
    peers: &Peers,
    ports: &[(u8, PortSel)],
    subject: &PodInfo,
    pods: &[PodInfo],
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
    for (proto, sel) in ports {
        match sel {
            PortSel::Nothing => {}
            PortSel::Any => out.extend(ids.iter().map(|id| rule(*id, *proto, None))),
            PortSel::Range(lo, hi) => out.extend(ids.iter().map(|id| rule(*id, *proto, Some((*lo, *hi))))),
            PortSel::Named(name) if dir == Direction::Ingress => {
                for (n, pr, num) in &subject.ports {
                    if n == name && pr == proto {
                        out.extend(ids.iter().map(|id| rule(*id, *proto, Some((*num, *num)))));
                    }
                }
            }
            PortSel::Named(name) => {
                // The destination's port: resolved per peer pod; ipBlocks have none.
                for p in pods {
                    let peer = match peers {
                        Peers::Any => true,
                        Peers::Some { pods: ids, .. } => ids.contains(&p.identity),
                    };
                    if !peer {
                        continue;
                    }
                    for (n, pr, num) in &p.ports {
                        if n == name && pr == proto {
                            out.insert(rule(p.identity, *proto, Some((*num, *num))));
                        }
                    }
                }
            }
        }
    }
}
