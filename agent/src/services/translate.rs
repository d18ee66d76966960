//! Services and EndpointSlices, translated into the datapath's service
//! ports: one frontend (address, port, protocol) per ClusterIP of each IP
//! family, external IP, load-balancer ingress IP and, for a NodePort, every
//! node address; each with the backends the EndpointSlices give that port.
//!
//! The rules, as kube-proxy applies them:
//! - headless (`clusterIP: None`) and ExternalName Services get nothing;
//! - a Service port's backends come from the slices labelled with the
//!   Service's name, of the frontend's address family, from the slice port
//!   with the same name and protocol (the slice carries the number a named
//!   `targetPort` resolved to, per pod);
//! - an endpoint is ready unless it says otherwise; serving defaults to
//!   ready; ready endpoints take new connections; the others (terminating,
//!   or failing a readiness probe) keep their TCP connections and take no
//!   new ones, unless no endpoint is ready: then the serving terminating
//!   ones take new connections too; an endpoint gone from every slice has
//!   its TCP connections reset at their next segment and its UDP flows
//!   moved (see `ServiceSync`);
//! - `internalTrafficPolicy: Local` keeps, for ClusterIP frontends, only
//!   the endpoints of this node;
//! - `sessionAffinity: ClientIP` pins a client for `timeoutSeconds`
//!   (10800 when missing);
//! - a Service without a usable endpoint rejects (a TCP reset, ICMP port
//!   unreachable for UDP), as kube-proxy's REJECT does (`sluice.io/unreachable: drop` makes it
//!   drop instead).
//!
//! Traffic a pod sends to a NodePort, external or load-balancer address is
//! balanced over all endpoints by the pod's own egress program (the
//! external traffic policy concerns traffic from outside the cluster,
//! which this datapath does not serve yet).

use crate::objects::{Objects, SERVICE_NAME_LABEL, key};
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use sluice_tc_datapath::layout::{PROTO_TCP, PROTO_UDP, proto_name};
use sluice_tc_datapath::maps::lb::Algorithm;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The annotation that picks the backend selection of a Service.
pub const ALGORITHM_ANNOTATION: &str = "sluice.io/lb-algorithm";
/// The annotation that makes a Service drop what it cannot serve (no
/// usable endpoint, a port its address does not serve) instead of
/// rejecting it as kube-proxy does.
pub const UNREACHABLE_ANNOTATION: &str = "sluice.io/unreachable";
const DEFAULT_AFFINITY_SECS: u32 = 10800;

/// Where a Service port is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: u8,
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = proto_name(self.proto);
        match self.vip {
            IpAddr::V4(a) => write!(f, "{a}:{}/{proto}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{proto}", self.port),
        }
    }
}

/// What one frontend must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backends {
    /// "namespace/name:port-name" (the port's number when unnamed).
    pub service: String,
    pub algorithm: Algorithm,
    pub affinity_timeout_secs: u32,
    pub reject: bool,
    /// A NodePort on a node's address, not a VIP: the address's other
    /// ports pass untouched.
    pub node_address: bool,
    /// Sorted by address and port.
    pub backends: Vec<BackendAddr>,
}

/// One backend of a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BackendAddr {
    pub addr: IpAddr,
    /// The target port.
    pub port: u16,
    /// Takes new connections; else draining (keeps its TCP connections).
    pub active: bool,
}

/// The node the agent runs on (for `internalTrafficPolicy: Local`).
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Translated {
    pub frontends: BTreeMap<Frontend, Backends>,
    /// What was left out, and why.
    pub warnings: Vec<String>,
}

/// Every Service at once (the reference `ServiceTranslation` keeps equal).
pub fn translate(objects: &Objects, node: &NodeView) -> Translated {
    let mut out = Translated::default();
    let mut slices: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in objects.slices().values() {
        let Some(svc) = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
            continue;
        };
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        slices.entry((ns, svc.clone())).or_default().push(s);
    }
    let node_addrs = node_addresses(objects);
    for svc in objects.services().values() {
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let mine = slices.get(&(ns, name)).map(Vec::as_slice).unwrap_or(&[]);
        service(svc, mine, &node_addrs, node, &mut out);
    }
    out
}

/// Every node's internal and external addresses (the NodePort frontends).
fn node_addresses(objects: &Objects) -> Vec<IpAddr> {
    objects
        .nodes()
        .values()
        .filter_map(|n| n.status.as_ref()?.addresses.as_ref())
        .flatten()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

/// The translation kept up to date Service by Service: an update translates
/// again only the Services whose Service or EndpointSlices changed since
/// the last one (`Objects` records which), or all of them when a Node's
/// addresses changed, and keeps the rest. Its frontends equal
/// `translate`'s; so do its warnings, as a set.
#[derive(Debug, Default)]
pub struct ServiceTranslation {
    /// The store and generation of the objects last seen.
    seen: Option<(u64, u64)>,
    node_addrs: Vec<IpAddr>,
    /// Each Service's own translation (its frontends, before any other
    /// Service claims them).
    per_service: BTreeMap<String, Translated>,
    /// Frontend -> the Services that claim it; the first by key keeps it.
    claims: BTreeMap<Frontend, BTreeSet<String>>,
    frontends: BTreeMap<Frontend, Backends>,
    /// The Services with warnings of their own, and the frontends claimed
    /// by more than one (so that warnings cost what there is to warn of).
    warned: BTreeSet<String>,
    contested: BTreeSet<Frontend>,
}

impl ServiceTranslation {
    /// Catch up with `objects`; returns how many Services were translated.
    pub fn update(&mut self, objects: &Objects, node: &NodeView) -> usize {
        let (store, _) = objects.generation();
        let changed: Vec<String> = match self.seen {
            Some((s, g)) if s == store && objects.nodes_changed() <= g => {
                objects.services_changed_since(g).map(String::from).collect()
            }
            _ => {
                *self = ServiceTranslation {
                    node_addrs: node_addresses(objects),
                    ..Default::default()
                };
                objects.services().keys().cloned().collect()
            }
        };
        self.seen = Some(objects.generation());
        let mut touched = BTreeSet::new();
        for key in &changed {
            self.warned.remove(key);
            if let Some(old) = self.per_service.remove(key) {
                for f in old.frontends.keys() {
                    if let Some(set) = self.claims.get_mut(f) {
                        set.remove(key);
                    }
                    touched.insert(*f);
                }
            }
            let Some(svc) = objects.services().get(key) else {
                continue;
            };
            let slices: Vec<&EndpointSlice> = objects.slices_of(key).collect();
            let mut own = Translated::default();
            service(svc, &slices, &self.node_addrs, node, &mut own);
            for f in own.frontends.keys() {
                self.claims.entry(*f).or_default().insert(key.clone());
                touched.insert(*f);
            }
            if !own.warnings.is_empty() {
                self.warned.insert(key.clone());
            }
            self.per_service.insert(key.clone(), own);
        }
        for f in touched {
            if self.claims.get(&f).is_some_and(|set| set.len() > 1) {
                self.contested.insert(f);
            } else {
                self.contested.remove(&f);
            }
            let winner = self.claims.get(&f).and_then(|set| set.first());
            match winner {
                Some(w) => {
                    let b = self.per_service[w].frontends[&f].clone();
                    self.frontends.insert(f, b);
                }
                None => {
                    self.claims.remove(&f);
                    self.frontends.remove(&f);
                }
            }
        }
        changed.len()
    }

    pub fn frontends(&self) -> &BTreeMap<Frontend, Backends> {
        &self.frontends
    }

    /// What was left out, and why: each Service's own warnings, and one per
    /// frontend a later Service claims in vain.
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .warned
            .iter()
            .flat_map(|k| self.per_service[k].warnings.iter().cloned())
            .collect();
        for f in &self.contested {
            let mut claimants = self.claims[f].iter().map(|k| &self.per_service[k].frontends[f].service);
            if let Some(first) = claimants.next() {
                for other in claimants {
                    out.push(format!("{f}: claimed by {first} and {other}; the first keeps it"));
                }
            }
        }
        out
    }
}

fn proto_of(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        _ => None,
    }
}

fn service(svc: &Service, slices: &[&EndpointSlice], node_addrs: &[IpAddr], node: &NodeView, out: &mut Translated) {
    let id = key(&svc.metadata);
    let Some(spec) = svc.spec.as_ref() else { return };
    if spec.type_.as_deref() == Some("ExternalName") {
        return;
    }
    let Some(Addresses { cluster, external }) = addresses(svc, &id, out) else {
        return; // headless: DNS only
    };
    let algorithm = algorithm(svc, &id, out);
    let reject = rejects(svc, &id, out);
    let affinity_timeout_secs = if spec.session_affinity.as_deref() == Some("ClientIP") {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref()?.timeout_seconds)
            .map_or(DEFAULT_AFFINITY_SECS, |t| t.max(1) as u32)
    } else {
        0
    };
    let local_only = spec.internal_traffic_policy.as_deref() == Some("Local");
    for sp in spec.ports.iter().flatten() {
        let Some(proto) = proto_of(sp.protocol.as_deref()) else {
            out.warnings.push(format!(
                "Service {id} port {}: protocol {} is not load-balanced by the datapath",
                sp.port,
                sp.protocol.as_deref().unwrap_or("?")
            ));
            continue;
        };
        let Ok(port) = u16::try_from(sp.port) else {
            out.warnings
                .push(format!("Service {id}: port {} is out of range", sp.port));
            continue;
        };
        let label = format!("{id}:{}", sp.name.clone().unwrap_or_else(|| sp.port.to_string()));
        // Each frontend, whether it keeps only this node's endpoints, and
        // whether it is a node's address.
        let mut fronts: Vec<(Frontend, bool, bool)> = Vec::new();
        for &vip in &cluster {
            fronts.push((Frontend { vip, port, proto }, local_only, false));
        }
        for &vip in &external {
            fronts.push((Frontend { vip, port, proto }, false, false));
        }
        if let Some(np) = sp.node_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0) {
            for &vip in node_addrs {
                fronts.push((Frontend { vip, port: np, proto }, false, true));
            }
        }
        for (f, local, node_address) in fronts {
            let b = Backends {
                service: label.clone(),
                algorithm,
                affinity_timeout_secs,
                reject,
                node_address,
                backends: endpoints(sp, proto, f.vip.is_ipv4(), slices, local.then_some(node), out),
            };
            if let Some(first) = out.frontends.get(&f) {
                out.warnings.push(format!(
                    "{f}: claimed by {} and {}; the first keeps it",
                    first.service, b.service
                ));
                continue;
            }
            out.frontends.insert(f, b);
        }
    }
}

/// A Service's own addresses: its cluster IPs, and its external and
/// load-balancer ingress IPs.
struct Addresses {
    cluster: Vec<IpAddr>,
    external: Vec<IpAddr>,
}

/// The Service's addresses (None for a headless one); one that does not
/// parse is left out with a warning.
fn addresses(svc: &Service, id: &str, out: &mut Translated) -> Option<Addresses> {
    let spec = svc.spec.as_ref()?;
    let mut cluster_ips: Vec<&str> = spec.cluster_ips.iter().flatten().map(String::as_str).collect();
    if cluster_ips.is_empty()
        && let Some(ip) = spec.cluster_ip.as_deref()
    {
        cluster_ips.push(ip);
    }
    if cluster_ips.contains(&"None") {
        return None;
    }
    let mut parse = |what: &str, s: &str| -> Option<IpAddr> {
        let a = s.parse().ok();
        if a.is_none() {
            out.warnings
                .push(format!("Service {id}: {what} {s:?} is not an address"));
        }
        a
    };
    let cluster = cluster_ips
        .into_iter()
        .filter_map(|ip| parse("clusterIP", ip))
        .collect();
    let mut external: Vec<IpAddr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|ip| parse("externalIP", ip))
        .collect();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref()?.ingress.as_ref());
    for i in ingress.into_iter().flatten() {
        if let Some(ip) = i.ip.as_deref() {
            external.extend(parse("load-balancer ingress IP", ip));
        }
    }
    Some(Addresses { cluster, external })
}

/// Whether what the Service cannot serve is answered (a TCP reset, ICMP
/// port unreachable for UDP: the default, as kube-proxy's REJECT) or dropped.
fn rejects(svc: &Service, id: &str, out: &mut Translated) -> bool {
    match annotation(svc, UNREACHABLE_ANNOTATION) {
        None | Some("reject") => true,
        Some("drop") => false,
        Some(other) => {
            out.warnings.push(format!(
                "Service {id}: {UNREACHABLE_ANNOTATION} {other:?} is neither \"reject\" nor \"drop\"; rejecting"
            ));
            true
        }
    }
}

fn annotation<'a>(svc: &'a Service, name: &str) -> Option<&'a str> {
    svc.metadata.annotations.as_ref()?.get(name).map(String::as_str)
}

/// The backend selection the Service's annotation picks (random unless it
/// says Maglev).
fn algorithm(svc: &Service, id: &str, out: &mut Translated) -> Algorithm {
    match annotation(svc, ALGORITHM_ANNOTATION) {
        None | Some("random") => Algorithm::Random,
        Some("maglev") => Algorithm::Maglev,
        Some(other) => {
            out.warnings.push(format!(
                "Service {id}: {ALGORITHM_ANNOTATION} {other:?} is neither \"random\" nor \"maglev\"; using random"
            ));
            Algorithm::Random
        }
    }
}

/// The backends of one Service port in one address family.
fn endpoints(
    sp: &ServicePort,
    proto: u8,
    v4: bool,
    slices: &[&EndpointSlice],
    only_node: Option<&NodeView>,
    out: &mut Translated,
) -> Vec<BackendAddr> {
    // (address, port) -> (ready, serving, terminating)
    let mut found: BTreeMap<(IpAddr, u16), (bool, bool, bool)> = BTreeMap::new();
    let family = if v4 { "IPv4" } else { "IPv6" };
    for s in slices.iter().filter(|s| s.address_type == family) {
        let Some(port) = s
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or("") == sp.name.as_deref().unwrap_or("")
                    && proto_of(p.protocol.as_deref()) == Some(proto)
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for e in &s.endpoints {
            if let Some(n) = only_node
                && e.node_name.as_deref() != Some(n.name.as_str())
            {
                continue;
            }
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            for a in &e.addresses {
                match a.parse::<IpAddr>() {
                    Ok(ip) if ip.is_ipv4() == v4 => {
                        found.insert((ip, port), (ready, serving, terminating));
                    }
                    // Not a backend: a slice of one family cannot hold the
                    // other's addresses (the API server refuses them; a
                    // manifest may not).
                    _ => {
                        let w = format!(
                            "EndpointSlice {}: address {a:?} is not {family}, its addressType; left out",
                            key(&s.metadata)
                        );
                        if !out.warnings.contains(&w) {
                            out.warnings.push(w);
                        }
                    }
                }
            }
        }
    }
    let any_ready = found.values().any(|c| c.0);
    found
        .into_iter()
        .map(|((addr, port), (ready, serving, terminating))| {
            // Not ready (terminating, or failing its readiness probe) it
            // keeps its connections and takes no new ones: as kube-proxy,
            // whose conntrack keeps a TCP flow while the pod lives. A
            // serving terminating endpoint takes new ones when nothing is
            // ready. Only an endpoint gone from every slice loses its flows.
            let active = ready || (terminating && serving && !any_ready);
            BackendAddr { addr, port, active }
        })
        .collect()
}
