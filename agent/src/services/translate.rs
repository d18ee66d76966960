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
//! - Services labelled `service.kubernetes.io/service-proxy-name` (another
//!   proxy's) or `service.kubernetes.io/headless` are left alone;
//! - EndpointSlice topology hints (`forZones`, `forNodes`; what
//!   `trafficDistribution: PreferClose` makes the controller write) keep a
//!   cluster-wide frontend to the endpoints meant for this node's zone
//!   (its `topology.kubernetes.io/zone` label) or this node, when every
//!   endpoint has hints and some are for here; else all are used.
//!
//! Traffic a pod sends to a NodePort, external or load-balancer address is
//! balanced over all endpoints by the pod's own egress program, as
//! kube-proxy does for traffic from inside the cluster. Traffic from
//! outside, at the node's uplinks, finds the external frontends: this
//! node's NodePorts (on its own addresses), its load-balancer IPs and
//! external IPs, each with only this node's endpoints under
//! `externalTrafficPolicy: Local` (dropped, not rejected, when there is
//! none: the load balancer's health check steers away), and with the
//! Service's `loadBalancerSourceRanges` on its load-balancer IPs.

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

/// The label of a Service another proxy serves.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The label of a Service no proxy serves (DNS only).
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// The node label topology hints name zones by.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Where a Service port is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: u8,
    /// Served to traffic from outside the node, at its uplinks; else to
    /// its pods and host sockets.
    pub external: bool,
}

impl Frontend {
    pub fn cluster(vip: IpAddr, port: u16, proto: u8) -> Frontend {
        Frontend {
            vip,
            port,
            proto,
            external: false,
        }
    }

    pub fn external(vip: IpAddr, port: u16, proto: u8) -> Frontend {
        Frontend {
            external: true,
            ..Frontend::cluster(vip, port, proto)
        }
    }
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = proto_name(self.proto);
        match self.vip {
            IpAddr::V4(a) => write!(f, "{a}:{}/{proto}", self.port)?,
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{proto}", self.port)?,
        }
        if self.external {
            write!(f, " (external)")?;
        }
        Ok(())
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
    /// The client prefixes admitted (loadBalancerSourceRanges, on a
    /// load-balancer IP's frontends); empty = every client.
    pub source_ranges: Vec<(IpAddr, u8)>,
    /// The node's own sockets are refused: the ranges hold none of the
    /// addresses its Node object lists (kube-proxy judges the node's
    /// connections to a load-balancer IP by the node's address).
    pub node_denied: bool,
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

/// The node the agent runs on (for the traffic policies and topology).
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    pub name: String,
    /// Addresses its NodePorts are served on to traffic from outside, in
    /// addition to its Node object's (`--node-ip`).
    pub addresses: Vec<IpAddr>,
}

/// What a Service's health check node port answers (kube-proxy's
/// `healthCheckNodePort`, for `externalTrafficPolicy: Local`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// "namespace/name".
    pub service: String,
    /// Ready endpoints on this node.
    pub local_endpoints: usize,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Translated {
    pub frontends: BTreeMap<Frontend, Backends>,
    /// Health check node port -> what it answers.
    pub health_checks: BTreeMap<u16, HealthCheck>,
    /// What was left out, and why.
    pub warnings: Vec<String>,
}

/// This node as the Node objects describe it.
#[derive(Debug, Clone, Default, PartialEq)]
struct Here {
    /// Its own addresses (NodePorts from outside).
    addrs: Vec<IpAddr>,
    zone: Option<String>,
    name: String,
}

impl Here {
    fn of(objects: &Objects, node: &NodeView) -> Here {
        let me = objects.nodes().get(&node.name);
        let mut addrs = node.addresses.clone();
        for a in me
            .and_then(|n| n.status.as_ref()?.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        {
            if let Ok(ip) = a.address.parse()
                && !addrs.contains(&ip)
            {
                addrs.push(ip);
            }
        }
        Here {
            addrs,
            zone: me.and_then(|n| n.metadata.labels.as_ref()?.get(ZONE_LABEL)).cloned(),
            name: node.name.clone(),
        }
    }
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
    let here = Here::of(objects, node);
    for svc in objects.services().values() {
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let mine = slices.get(&(ns, name)).map(Vec::as_slice).unwrap_or(&[]);
        service(svc, mine, &node_addrs, &here, &mut out);
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
    here: Here,
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
                    here: Here::of(objects, node),
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
            service(svc, &slices, &self.node_addrs, &self.here, &mut own);
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

    /// Every health check node port of this node's Services.
    pub fn health_checks(&self) -> BTreeMap<u16, HealthCheck> {
        let mut out = BTreeMap::new();
        for t in self.per_service.values() {
            for (port, h) in &t.health_checks {
                out.entry(*port).or_insert_with(|| h.clone());
            }
        }
        out
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

fn service(svc: &Service, slices: &[&EndpointSlice], node_addrs: &[IpAddr], here: &Here, out: &mut Translated) {
    let id = key(&svc.metadata);
    let Some(spec) = svc.spec.as_ref() else { return };
    if spec.type_.as_deref() == Some("ExternalName") {
        return;
    }
    // Another proxy's, or no proxy's: kube-proxy leaves them alone too.
    if let Some(labels) = &svc.metadata.labels
        && (labels.contains_key(SERVICE_PROXY_NAME_LABEL) || labels.contains_key(HEADLESS_LABEL))
    {
        return;
    }
    let Some(Addresses {
        cluster,
        external_ips,
        lb_ips,
    }) = addresses(svc, &id, out)
    else {
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
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let source_ranges = source_ranges(svc, &id, out);
    if external_local
        && let Some(hc) = spec
            .health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
    {
        out.health_checks.insert(
            hc,
            HealthCheck {
                service: id.clone(),
                local_endpoints: local_ready(slices, &here.name),
            },
        );
    }
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
        let mut fronts: Vec<Front<'_>> = Vec::new();
        for &vip in &cluster {
            fronts.push((Frontend::cluster(vip, port, proto), local_only, false, &[]));
        }
        // From inside the cluster too: a pod calling a load-balancer IP is
        // held to its source ranges, as kube-proxy's rules hold it.
        for &vip in &external_ips {
            fronts.push((Frontend::cluster(vip, port, proto), false, false, &[]));
        }
        for &vip in &lb_ips {
            fronts.push((Frontend::cluster(vip, port, proto), false, false, &source_ranges));
        }
        for &vip in &external_ips {
            fronts.push((Frontend::external(vip, port, proto), external_local, false, &[]));
        }
        for &vip in &lb_ips {
            fronts.push((
                Frontend::external(vip, port, proto),
                external_local,
                false,
                &source_ranges,
            ));
        }
        if let Some(np) = sp.node_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0) {
            // Every node's addresses, and this node's own that no Node
            // object lists (`--node-ip`): an address with an external
            // frontend needs a cluster one too, whose VIP marker puts it in
            // the VIP filter the uplink programs read first.
            let own = here.addrs.iter().filter(|a| !node_addrs.contains(a));
            for &vip in node_addrs.iter().chain(own) {
                fronts.push((Frontend::cluster(vip, np, proto), false, true, &[]));
            }
            for &vip in &here.addrs {
                fronts.push((Frontend::external(vip, np, proto), external_local, false, &[]));
            }
        }
        for (f, local, node_address, ranges) in fronts {
            let source_ranges: Vec<(IpAddr, u8)> = ranges
                .iter()
                .filter(|(a, _)| a.is_ipv4() == f.vip.is_ipv4())
                .copied()
                .collect();
            // A node whose Node object names no address is not judged.
            let node_denied = !f.external
                && !source_ranges.is_empty()
                && !here.addrs.is_empty()
                && !here
                    .addrs
                    .iter()
                    .any(|a| source_ranges.iter().any(|&(net, bits)| in_prefix(*a, net, bits)));
            let b = Backends {
                service: label.clone(),
                algorithm,
                affinity_timeout_secs,
                // No local endpoint under eTP Local drops, as kube-proxy.
                reject: reject && !(f.external && external_local),
                node_address,
                source_ranges,
                node_denied,
                backends: endpoints(sp, proto, f.vip.is_ipv4(), slices, here, local, out),
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

/// A frontend of a Service port, whether it keeps only this node's
/// endpoints, whether it is a node's address, and its source ranges.
type Front<'a> = (Frontend, bool, bool, &'a [(IpAddr, u8)]);

/// The Service's loadBalancerSourceRanges; one that does not parse is
/// left out with a warning (and, if none parses, every client is admitted,
/// as the API server refuses such a Service anyway).
fn source_ranges(svc: &Service, id: &str, out: &mut Translated) -> Vec<(IpAddr, u8)> {
    let mut ranges = Vec::new();
    let listed = svc.spec.as_ref().and_then(|s| s.load_balancer_source_ranges.as_ref());
    for r in listed.into_iter().flatten() {
        match r.trim().parse::<ipnetwork::IpNetwork>() {
            Ok(n) => ranges.push((n.network(), n.prefix())),
            Err(_) => out.warnings.push(format!(
                "Service {id}: loadBalancerSourceRanges entry {r:?} is not a CIDR; left out"
            )),
        }
    }
    ranges
}

/// Whether `a` is in `net`/`bits` (of its own family).
fn in_prefix(a: IpAddr, net: IpAddr, bits: u8) -> bool {
    ipnetwork::IpNetwork::new(net, bits).is_ok_and(|n| n.contains(a))
}

/// Ready endpoints of a Service on node `name`: those of the address
/// family that has the most (a dual-stack pod is one endpoint in each
/// family's slices; kube-proxy counts per family too).
fn local_ready(slices: &[&EndpointSlice], name: &str) -> usize {
    let mut by_family: BTreeMap<&str, BTreeSet<&[String]>> = BTreeMap::new();
    for s in slices {
        for e in &s.endpoints {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if ready && e.node_name.as_deref() == Some(name) {
                by_family
                    .entry(s.address_type.as_str())
                    .or_default()
                    .insert(e.addresses.as_slice());
            }
        }
    }
    by_family.values().map(BTreeSet::len).max().unwrap_or(0)
}

/// A Service's own addresses: its cluster IPs, its external IPs and its
/// load-balancer ingress IPs.
struct Addresses {
    cluster: Vec<IpAddr>,
    external_ips: Vec<IpAddr>,
    lb_ips: Vec<IpAddr>,
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
    let external_ips: Vec<IpAddr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|ip| parse("externalIP", ip))
        .collect();
    let mut lb_ips = Vec::new();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref()?.ingress.as_ref());
    for i in ingress.into_iter().flatten() {
        if let Some(ip) = i.ip.as_deref() {
            lb_ips.extend(parse("load-balancer ingress IP", ip));
        }
    }
    Some(Addresses {
        cluster,
        external_ips,
        lb_ips,
    })
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

/// The backends of one Service port in one address family: this node's
/// only when `local`, else those topology hints give this node's zone.
fn endpoints(
    sp: &ServicePort,
    proto: u8,
    v4: bool,
    slices: &[&EndpointSlice],
    here: &Here,
    local: bool,
    out: &mut Translated,
) -> Vec<BackendAddr> {
    // (address, port) -> (ready, serving, terminating, meant for here)
    let mut found: BTreeMap<(IpAddr, u16), (bool, bool, bool, bool)> = BTreeMap::new();
    // Hints are followed only when every endpoint has them.
    let mut all_hinted = true;
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
            if local && e.node_name.as_deref() != Some(here.name.as_str()) {
                continue;
            }
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let hints = e.hints.as_ref();
            let for_nodes = hints.and_then(|h| h.for_nodes.as_ref()).filter(|n| !n.is_empty());
            let for_zones = hints.and_then(|h| h.for_zones.as_ref()).filter(|z| !z.is_empty());
            let for_here = match (for_nodes, for_zones) {
                (Some(n), _) => n.iter().any(|n| n.name == here.name),
                (None, Some(z)) => here.zone.as_ref().is_some_and(|mine| z.iter().any(|z| &z.name == mine)),
                (None, None) => {
                    all_hinted = false;
                    false
                }
            };
            for a in &e.addresses {
                match a.parse::<IpAddr>() {
                    Ok(ip) if ip.is_ipv4() == v4 => {
                        found.insert((ip, port), (ready, serving, terminating, for_here));
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
    // Topology: only the endpoints meant for here, if every endpoint says
    // where it is meant for and some are for here (kube-proxy's rule).
    if !local && all_hinted && found.values().any(|c| c.3 && c.0) {
        found.retain(|_, c| c.3);
    }
    let any_ready = found.values().any(|c| c.0);
    found
        .into_iter()
        .map(|((addr, port), (ready, serving, terminating, _))| {
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
