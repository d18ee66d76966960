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

mod rules;

use crate::selector::{Labels, matches};
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use rules::{Peers, RulePort, expand, ports};
use sluice_tc_datapath::ids::IdAllocator;
use sluice_tc_datapath::layout::{Direction, ID_FIRST_ALLOCATED, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use sluice_tc_datapath::maps::policy::Rule;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

/// The label every namespace carries, set by the API server.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

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

/// The pods of a translation, indexed the ways the policies read them.
struct View<'a> {
    pods: &'a [&'a PodInfo],
    /// Each live identity and the label set it stands for.
    idents: &'a BTreeMap<u32, &'a IdentityKey>,
    by_ns: &'a BTreeMap<&'a str, Vec<&'a PodInfo>>,
}

struct PodInfo {
    key: String,
    identity: u32,
    id_key: IdentityKey,
    ips: Vec<IpAddr>,
    /// Every named container port.
    ports: Vec<NamedPort>,
}

/// A container port with a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedPort {
    pub name: String,
    pub proto: u8,
    pub number: u16,
}

/// What policy reads of a Pod, in a compact form (a cluster's Pods are most
/// of what the agent holds): its name, namespace and labels, its addresses
/// and named ports; `inert` when it has the host's network or is done (no
/// address of its own to police).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodView {
    pub name: String,
    pub namespace: String,
    pub labels: Labels,
    pub inert: bool,
    pub ips: Vec<IpAddr>,
    pub ports: Vec<NamedPort>,
}

impl From<&Pod> for PodView {
    fn from(p: &Pod) -> PodView {
        let spec = p.spec.as_ref();
        let status = p.status.as_ref();
        let inert = spec.and_then(|s| s.host_network) == Some(true)
            || matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
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
        let ports = spec
            .into_iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|cp| {
                Some(NamedPort {
                    name: cp.name.clone()?,
                    proto: proto(cp.protocol.as_deref())?,
                    number: u16::try_from(cp.container_port).ok()?,
                })
            })
            .collect();
        PodView {
            name: p.metadata.name.clone().unwrap_or_default(),
            namespace: namespace_of(&p.metadata),
            labels: p.metadata.labels.clone().unwrap_or_default(),
            inert,
            ips,
            ports,
        }
    }
}

/// Turns cluster objects into `Desired`, keeping identity and policy ids
/// stable from one call to the next.
pub struct Translator {
    identities: IdAllocator<IdentityKey>,
    cidrs: IdAllocator<IpNetwork>,
    policies: IdAllocator<(String, String)>,
    /// Label keys never part of an identity (`--identity-exclude-labels`).
    excluded: BTreeSet<String>,
    /// This node's pod addresses: only their pods get rules (None: every
    /// pod, for the tools and tests that want the whole cluster).
    local: Option<BTreeSet<IpAddr>>,
    /// Each pod's translation, kept while its compact form, the relevant
    /// label keys and the namespaces' labels stay as they were: a change
    /// of one pod translates that pod, not the cluster.
    cache: HashMap<String, Cached>,
    /// What the cached translations were made under.
    basis: Option<Basis>,
    /// Stamps the cache entries seen by the current translation.
    pass: u64,
}

/// The relevant pod label keys, namespace label keys, and the namespaces'
/// labels a translation was made under.
type Basis = (BTreeSet<String>, BTreeSet<String>, BTreeMap<String, Labels>);

struct Cached {
    /// A hash of the compact form it was made from (a copy would double
    /// what the agent holds per pod).
    fingerprint: u64,
    /// Made from this node's records: never reused.
    volatile: bool,
    info: Option<PodInfo>,
    pass: u64,
}

fn fingerprint(p: &PodView) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    p.hash(&mut h);
    h.finish()
}

impl Default for Translator {
    fn default() -> Self {
        Translator {
            identities: IdAllocator::new(ID_FIRST_ALLOCATED),
            // CIDR identities from a range of their own, so an id says what it is.
            cidrs: IdAllocator::new(1 << 24),
            policies: IdAllocator::new(1),
            excluded: BTreeSet::new(),
            local: None,
            cache: HashMap::new(),
            basis: None,
            pass: 0,
        }
    }
}

/// The label keys some selector in force reads: of pods (policies' pod
/// selectors and their peers') and of namespaces (peers' namespace
/// selectors). An identity keeps only those: a label no selector reads
/// (`pod-template-hash`, a build id) cannot split pods that every policy
/// treats alike, and a selector on restricted labels decides as it would
/// on all of them (it reads only the keys it names).
fn relevant_keys(policies: &[&NetworkPolicy]) -> (BTreeSet<String>, BTreeSet<String>) {
    fn keys(sel: &LabelSelector, into: &mut BTreeSet<String>) {
        into.extend(sel.match_labels.iter().flatten().map(|(k, _)| k.clone()));
        into.extend(sel.match_expressions.iter().flatten().map(|r| r.key.clone()));
    }
    let (mut pod, mut ns) = (BTreeSet::new(), BTreeSet::new());
    for p in policies {
        if let Some(sel) = p.spec.as_ref().and_then(|s| s.pod_selector.as_ref()) {
            keys(sel, &mut pod);
        }
        for peer in all_peers(p) {
            if let Some(sel) = &peer.pod_selector {
                keys(sel, &mut pod);
            }
            if let Some(sel) = &peer.namespace_selector {
                keys(sel, &mut ns);
            }
        }
    }
    (pod, ns)
}

fn restricted(labels: &Labels, keep: &BTreeSet<String>, excluded: &BTreeSet<String>) -> Labels {
    labels
        .iter()
        .filter(|(k, _)| keep.contains(*k) && !excluded.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
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

    /// Leave these label keys out of every identity, whatever selects on
    /// them (a selector on one then sees it absent, and is warned about).
    pub fn exclude_labels(&mut self, keys: impl IntoIterator<Item = String>) {
        self.excluded = keys.into_iter().collect();
        self.cache.clear();
    }

    /// Give rules to the pods of these addresses only (this node's); the
    /// identities, the ipcache and the CIDRs stay the whole cluster's.
    pub fn set_local(&mut self, local: Option<BTreeSet<IpAddr>>) {
        self.local = local;
    }

    /// The objects by reference, from wherever the caller keeps them (the
    /// agent's store: nothing is cloned for a translation).
    pub fn translate<'a>(
        &mut self,
        namespaces: impl IntoIterator<Item = &'a Namespace>,
        pods: impl IntoIterator<Item = &'a Pod>,
        policies: impl IntoIterator<Item = &'a NetworkPolicy>,
    ) -> Desired {
        self.translate_with_addresses(namespaces, pods, policies, &BTreeMap::new())
    }

    /// `translate`, with the addresses of pods whose status has none yet
    /// ("namespace/name" -> addresses): a pod just started, whose
    /// addresses the node's CNI plugin recorded before the kubelet
    /// reported them.
    pub fn translate_with_addresses<'a>(
        &mut self,
        namespaces: impl IntoIterator<Item = &'a Namespace>,
        pods: impl IntoIterator<Item = &'a Pod>,
        policies: impl IntoIterator<Item = &'a NetworkPolicy>,
        addresses: &BTreeMap<String, Vec<IpAddr>>,
    ) -> Desired {
        let views: Vec<PodView> = pods.into_iter().map(PodView::from).collect();
        self.translate_views(namespaces, &views, policies, addresses)
    }

    /// `translate_with_addresses` over Pods already in their compact form
    /// (the agent's store keeps them so).
    pub fn translate_views<'a, 'p>(
        &mut self,
        namespaces: impl IntoIterator<Item = &'a Namespace>,
        pods: impl IntoIterator<Item = &'p PodView>,
        policies: impl IntoIterator<Item = &'a NetworkPolicy>,
        addresses: &BTreeMap<String, Vec<IpAddr>>,
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
        let policies_all = policies;
        let (pod_keys, ns_keys) = relevant_keys(&policies_all);
        for p in &policies_all {
            let all_sel = p
                .spec
                .iter()
                .flat_map(|s| s.pod_selector.iter())
                .chain(all_peers(p).flat_map(|x| x.pod_selector.iter().chain(x.namespace_selector.iter())));
            for sel in all_sel {
                let named = sel
                    .match_labels
                    .iter()
                    .flatten()
                    .map(|(k, _)| k)
                    .chain(sel.match_expressions.iter().flatten().map(|r| &r.key));
                for k in named.filter(|k| self.excluded.contains(*k)) {
                    d.warnings.push(format!(
                        "policy {}/{}: selects on {k}, a label left out of identities (--identity-exclude-labels): it is read as absent",
                        namespace_of(&p.metadata),
                        p.metadata.name.clone().unwrap_or_default()
                    ));
                }
            }
        }
        let policies = policies_all;
        // This node's records are the truth about its addresses: a stale
        // object of a pod gone (its address given to a new pod) loses it.
        let owners: BTreeMap<IpAddr, &str> = addresses
            .iter()
            .flat_map(|(k, ips)| ips.iter().map(move |ip| (*ip, k.as_str())))
            .collect();
        // Pods translated again only where something they depend on moved.
        let basis = (pod_keys.clone(), ns_keys.clone(), ns_labels.clone());
        if self.basis.as_ref() != Some(&basis) {
            self.cache.clear();
            self.basis = Some(basis);
        }
        self.pass += 1;
        let pass = self.pass;
        for p in pods {
            let mut key = String::with_capacity(p.namespace.len() + 1 + p.name.len());
            key.push_str(&p.namespace);
            key.push('/');
            key.push_str(&p.name);
            // A pod this node recorded, or one whose address a record
            // claims, depends on the records: translated every time.
            let volatile = addresses.contains_key(&key) || p.ips.iter().any(|ip| owners.contains_key(ip));
            let print = fingerprint(p);
            if !volatile
                && let Some(c) = self.cache.get_mut(&key)
                && !c.volatile
                && c.fingerprint == print
            {
                c.pass = pass;
                continue;
            }
            let info = self.pod_info(p, &ns_labels, addresses, &owners, (&pod_keys, &ns_keys));
            self.cache.insert(
                key,
                Cached {
                    fingerprint: print,
                    volatile,
                    info,
                    pass,
                },
            );
        }
        self.cache.retain(|_, c| c.pass == pass);
        let cache = std::mem::take(&mut self.cache);
        let infos: Vec<&PodInfo> = cache.values().filter_map(|c| c.info.as_ref()).collect();
        let mut ident_keys: BTreeMap<u32, &IdentityKey> = BTreeMap::new();
        for i in &infos {
            ident_keys.entry(i.identity).or_insert(&i.id_key);
            for ip in &i.ips {
                d.ipcache.insert(*ip, i.identity);
            }
        }
        self.identities
            .retain(&ident_keys.values().map(|k| (*k).clone()).collect());
        for (id, k) in &ident_keys {
            d.identities.insert(*id, k.name());
        }

        // Every prefix of every ipBlock, excepts included, is an identity.
        let prefixes = cidr_prefixes(&policies);
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
        // Selectors are evaluated once per identity (a label set), not per
        // pod; a policy's subjects are looked for in its namespace only.
        let mut by_ns: BTreeMap<&str, Vec<&PodInfo>> = BTreeMap::new();
        for i in &infos {
            by_ns.entry(i.id_key.namespace.as_str()).or_default().push(i);
        }
        let view = View {
            pods: &infos,
            idents: &ident_keys,
            by_ns: &by_ns,
        };
        for pol in sorted {
            self.policy(pol, &view, &mut d);
        }
        // The indexes borrow the cache: gone before it goes back.
        drop(by_ns);
        drop(ident_keys);
        drop(infos);
        self.cache = cache;
        d
    }

    /// A pod's identity and what policy needs of it; None for a pod that
    /// has no address of its own (host network) or is done.
    fn pod_info(
        &mut self,
        p: &PodView,
        ns_labels: &BTreeMap<String, Labels>,
        addresses: &BTreeMap<String, Vec<IpAddr>>,
        owners: &BTreeMap<IpAddr, &str>,
        (pod_keys, ns_keys): (&BTreeSet<String>, &BTreeSet<String>),
    ) -> Option<PodInfo> {
        if p.inert {
            return None;
        }
        let key = format!("{}/{}", p.namespace, p.name);
        let mut ips = p.ips.clone();
        ips.retain(|ip| owners.get(ip).is_none_or(|o| *o == key));
        if ips.is_empty()
            && let Some(a) = addresses.get(&key)
        {
            ips = a.clone();
        }
        let mut nsl = ns_labels.get(&p.namespace).cloned().unwrap_or_default();
        nsl.insert(NAMESPACE_NAME_LABEL.into(), p.namespace.clone());
        let id_key = IdentityKey {
            namespace: p.namespace.clone(),
            pod_labels: restricted(&p.labels, pod_keys, &self.excluded),
            ns_labels: restricted(&nsl, ns_keys, &BTreeSet::new()),
        };
        Some(PodInfo {
            key,
            identity: self.identities.id(&id_key),
            id_key,
            ips,
            ports: p.ports.clone(),
        })
    }

    fn policy(&mut self, pol: &NetworkPolicy, view: &View<'_>, d: &mut Desired) {
        let pods = view.pods;
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
        let local = self.local.as_ref();
        let subjects: Vec<&PodInfo> = view
            .by_ns
            .get(ns.as_str())
            .into_iter()
            .flatten()
            .copied()
            .filter(|p| local.is_none_or(|l| p.ips.iter().any(|ip| l.contains(ip))))
            .filter(|p| matches(&selector, &p.id_key.pod_labels))
            .collect();
        if subjects.is_empty() {
            return;
        }
        let what = format!("policy {ns}/{name}");
        // Each rule read once, applied to every subject.
        let mut rules: Vec<(Direction, Peers, Vec<RulePort>)> = Vec::new();
        if types.contains(&"Ingress") {
            for r in spec.ingress.iter().flatten() {
                let peers = self.peers(&ns, r.from.as_deref(), view.idents, d, &what);
                rules.push((Direction::Ingress, peers, ports(r.ports.as_deref(), d, &what)));
            }
        }
        if types.contains(&"Egress") {
            for r in spec.egress.iter().flatten() {
                let peers = self.peers(&ns, r.to.as_deref(), view.idents, d, &what);
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
        idents: &BTreeMap<u32, &IdentityKey>,
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
            for (id, key) in idents {
                let ns_ok = match &peer.namespace_selector {
                    Some(sel) => matches(sel, &key.ns_labels),
                    None => key.namespace == policy_ns,
                };
                let pod_ok = peer
                    .pod_selector
                    .as_ref()
                    .is_none_or(|sel| matches(sel, &key.pod_labels));
                if ns_ok && pod_ok {
                    ids.insert(*id);
                }
            }
        }
        Peers::Some { pods: ids, cidrs }
    }
}

/// Every prefix of every ipBlock of the policies, excepts included.
fn cidr_prefixes(policies: &[&NetworkPolicy]) -> BTreeSet<IpNetwork> {
    let mut prefixes = BTreeSet::new();
    for pol in policies {
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
    prefixes
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
