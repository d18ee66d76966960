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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The label every namespace carries, set by the API server.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// What one node's datapath must hold, for the whole cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Identity -> what it stands for (for the tools).
    pub identities: BTreeMap<u32, String>,
    /// Policy id -> "namespace/name".
    pub policies: BTreeMap<u32, String>,
    /// Every pod address -> its identity (shared with the translator:
    /// let it go before the next pass, which would copy it otherwise).
    pub ipcache: Arc<BTreeMap<IpAddr, u32>>,
    /// The addresses whose entry differs from pass `.0`'s, when the pass
    /// knew (None: compare them all).
    pub ipcache_changes: Option<(u64, BTreeSet<IpAddr>)>,
    /// This pass, numbered across translators.
    pub pass: u64,
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

struct PodInfo {
    identity: u32,
    ips: Vec<IpAddr>,
    /// Every named container port.
    ports: Vec<NamedPort>,
}

/// An identity: the label set it stands for, how many pods carry it, and
/// the named ports they give (counted: an egress rule by port name takes
/// the union over the destination's pods).
struct Ident {
    key: IdentityKey,
    pods: usize,
    ports: BTreeMap<NamedPort, usize>,
}

/// What the policies read of the pods, in a pass: the identities, and the
/// pods that get rules (this node's), by namespace.
struct View<'a> {
    idents: &'a BTreeMap<u32, Ident>,
    subjects: &'a BTreeMap<&'a str, Vec<(&'a str, &'a PodInfo)>>,
}

/// A container port with a name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NamedPort {
    pub name: String,
    pub proto: u8,
    pub number: u16,
}

/// What policy reads of a Pod, in a compact form (a cluster's Pods are most
/// of what the agent holds): its name, namespace and labels, its addresses
/// and named ports; `inert` when it has the host's network or is done (no
/// address of its own to police).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub namespace: String,
    pub labels: Labels,
    pub inert: bool,
    pub ips: Vec<IpAddr>,
    pub ports: Vec<NamedPort>,
}

impl PodView {
    /// "namespace/name", as the agent's store keys it.
    pub fn key(&self) -> String {
        let mut key = String::with_capacity(self.namespace.len() + 1 + self.name.len());
        key.push_str(&self.namespace);
        key.push('/');
        key.push_str(&self.name);
        key
    }
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
/// stable from one call to the next, and its pods' translations: a pass
/// told which pods changed translates those, not the cluster.
pub struct Translator {
    identities: IdAllocator<IdentityKey>,
    cidrs: IdAllocator<IpNetwork>,
    policies: IdAllocator<(String, String)>,
    /// Label keys never part of an identity (`--identity-exclude-labels`).
    excluded: BTreeSet<String>,
    /// This node's pod addresses: only their pods get rules (None: every
    /// pod, for the tools and tests that want the whole cluster).
    local: Option<BTreeSet<IpAddr>>,
    /// Each pod's translation, by "namespace/name" (None: a pod without
    /// an address of its own, host network or done).
    pods: HashMap<String, Option<PodInfo>>,
    /// The pods made from this node's records at the last pass (a
    /// recorded address, or one a record took from them): made again at
    /// every pass, as the records move.
    volatile: BTreeSet<String>,
    /// Every identity some pod carries.
    idents: BTreeMap<u32, Ident>,
    /// Address -> the pods claiming it, with their identity: one, but for
    /// a while two (a stale object keeps an address a new pod was given).
    claims: BTreeMap<IpAddr, Vec<(String, u32)>>,
    /// Address -> identity, as the last pass left it; shared with the
    /// `Desired` it made (copied only if that is still held at the next).
    ipcache: Arc<BTreeMap<IpAddr, u32>>,
    /// What the pods' translations were made under.
    basis: Option<Basis>,
    /// The last pass (numbered across translators).
    pass: u64,
}

/// The relevant pod label keys, namespace label keys, and the namespaces'
/// labels a translation was made under.
type Basis = (BTreeSet<String>, BTreeSet<String>, BTreeMap<String, Labels>);

/// What a pass reads while it translates pods.
struct PassInput<'a> {
    ns_labels: &'a BTreeMap<String, Labels>,
    pod_keys: &'a BTreeSet<String>,
    ns_keys: &'a BTreeSet<String>,
    addresses: &'a BTreeMap<String, Vec<IpAddr>>,
    /// This node's records are the truth about its addresses: a stale
    /// object of a pod gone (its address given to a new pod) loses it.
    owners: BTreeMap<IpAddr, &'a str>,
}

fn next_pass() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
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
            pods: HashMap::new(),
            volatile: BTreeSet::new(),
            idents: BTreeMap::new(),
            claims: BTreeMap::new(),
            ipcache: Arc::default(),
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
        self.basis = None;
    }

    /// Give rules to the pods of these addresses only (this node's); the
    /// identities, the ipcache and the CIDRs stay the whole cluster's.
    pub fn set_local(&mut self, local: Option<BTreeSet<IpAddr>>) {
        self.local = local;
    }

    /// The pod ("namespace/name") an address is in the ipcache for, as of
    /// the last pass.
    pub fn pod_at(&self, ip: &IpAddr) -> Option<&str> {
        claimant(self.claims.get(ip)?).map(|(k, _)| k.as_str())
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

    /// `translate_with_addresses` over Pods already in their compact form:
    /// every pod translated again.
    pub fn translate_views<'a, 'p>(
        &mut self,
        namespaces: impl IntoIterator<Item = &'a Namespace>,
        pods: impl IntoIterator<Item = &'p PodView>,
        policies: impl IntoIterator<Item = &'a NetworkPolicy>,
        addresses: &BTreeMap<String, Vec<IpAddr>>,
    ) -> Desired {
        let policies: Vec<&NetworkPolicy> = policies.into_iter().collect();
        let (mut d, basis) = self.begin(namespaces, &policies);
        let input = PassInput::new(&basis, addresses);
        self.rebuild(pods.into_iter().map(|p| (p.key(), p)), &input);
        drop(input);
        self.basis = Some(basis);
        self.finish(&policies, &mut d, None);
        d
    }

    /// A pass over the agent's store, told which pods changed since the
    /// last one (None: unknown, all of them): only those pods, and the
    /// pods this node's records touch, are translated again, and the
    /// ipcache says which addresses moved. A change of what identities
    /// are made of (the label keys selectors read, a namespace's labels)
    /// translates every pod.
    pub fn translate_changes<'a, 'k>(
        &mut self,
        namespaces: impl IntoIterator<Item = &'a Namespace>,
        pods: &BTreeMap<String, PodView>,
        changed: Option<impl IntoIterator<Item = &'k str>>,
        policies: impl IntoIterator<Item = &'a NetworkPolicy>,
        addresses: &BTreeMap<String, Vec<IpAddr>>,
    ) -> Desired {
        let policies: Vec<&NetworkPolicy> = policies.into_iter().collect();
        let (mut d, basis) = self.begin(namespaces, &policies);
        let input = PassInput::new(&basis, addresses);
        let moved = match changed {
            Some(keys) if self.basis.as_ref() == Some(&basis) => {
                Some(self.update(pods, keys.into_iter().map(String::from).collect(), &input))
            }
            _ => {
                self.rebuild(pods.iter().map(|(k, p)| (k.clone(), p)), &input);
                None
            }
        };
        drop(input);
        self.basis = Some(basis);
        self.finish(&policies, &mut d, moved);
        d
    }

    /// What every pass starts with: the policies' warnings, and the basis
    /// its pods are translated under.
    fn begin<'a>(
        &self,
        namespaces: impl IntoIterator<Item = &'a Namespace>,
        policies: &[&NetworkPolicy],
    ) -> (Desired, Basis) {
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
        let (pod_keys, ns_keys) = relevant_keys(policies);
        for p in policies {
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
        (d, (pod_keys, ns_keys, ns_labels))
    }

    /// Every pod translated again; identities no pod carries any more are
    /// released (after the pass: no id stands for two label sets in one).
    fn rebuild<'p>(&mut self, pods: impl Iterator<Item = (String, &'p PodView)>, input: &PassInput<'_>) {
        self.pods.clear();
        self.volatile.clear();
        self.idents.clear();
        self.claims.clear();
        let mut touched = BTreeSet::new();
        for (key, p) in pods {
            self.add_pod(key, p, input, &mut touched);
        }
        let live: BTreeSet<IdentityKey> = self.idents.values().map(|i| i.key.clone()).collect();
        self.identities.retain(&live);
        let ipcache: BTreeMap<IpAddr, u32> = self
            .claims
            .iter()
            .filter_map(|(ip, c)| Some((*ip, claimant(c)?.1)))
            .collect();
        self.ipcache = Arc::new(ipcache);
    }

    /// The pods of `changed`, and those this node's records touch (now or
    /// at the last pass), translated again; the addresses whose identity
    /// moved.
    fn update(
        &mut self,
        pods: &BTreeMap<String, PodView>,
        mut changed: BTreeSet<String>,
        input: &PassInput<'_>,
    ) -> BTreeSet<IpAddr> {
        changed.append(&mut std::mem::take(&mut self.volatile));
        changed.extend(input.addresses.keys().cloned());
        for ip in input.owners.keys() {
            changed.extend(self.claims.get(ip).into_iter().flatten().map(|(k, _)| k.clone()));
        }
        let (mut touched, mut emptied) = (BTreeSet::new(), Vec::new());
        for key in changed {
            self.remove_pod(&key, &mut touched, &mut emptied);
            if let Some(p) = pods.get(&key) {
                self.add_pod(key, p, input, &mut touched);
            }
        }
        for id in emptied {
            if self.idents.get(&id).is_some_and(|i| i.pods == 0)
                && let Some(i) = self.idents.remove(&id)
            {
                self.identities.release(&i.key);
            }
        }
        let ipcache = Arc::make_mut(&mut self.ipcache);
        let mut moved = BTreeSet::new();
        for ip in touched {
            let now = self.claims.get(&ip).and_then(|c| claimant(c)).map(|(_, id)| *id);
            let was = match now {
                Some(id) => ipcache.insert(ip, id),
                None => ipcache.remove(&ip),
            };
            if was != now {
                moved.insert(ip);
            }
        }
        moved
    }

    fn add_pod(&mut self, key: String, p: &PodView, input: &PassInput<'_>, touched: &mut BTreeSet<IpAddr>) {
        let volatile = input.addresses.contains_key(&key) || p.ips.iter().any(|ip| input.owners.contains_key(ip));
        let info = self.pod_info(&key, p, input).map(|(info, id_key)| {
            let ident = self.idents.entry(info.identity).or_insert_with(|| Ident {
                key: id_key,
                pods: 0,
                ports: BTreeMap::new(),
            });
            ident.pods += 1;
            for np in &info.ports {
                *ident.ports.entry(np.clone()).or_default() += 1;
            }
            for ip in &info.ips {
                self.claims.entry(*ip).or_default().push((key.clone(), info.identity));
                touched.insert(*ip);
            }
            info
        });
        if volatile {
            self.volatile.insert(key.clone());
        }
        self.pods.insert(key, info);
    }

    /// Take a pod's translation out of the indexes; identities left
    /// without pods go to `emptied`.
    fn remove_pod(&mut self, key: &str, touched: &mut BTreeSet<IpAddr>, emptied: &mut Vec<u32>) {
        let Some(Some(info)) = self.pods.remove(key) else {
            return;
        };
        for ip in &info.ips {
            if let Some(c) = self.claims.get_mut(ip) {
                c.retain(|(k, _)| k != key);
                if c.is_empty() {
                    self.claims.remove(ip);
                }
            }
            touched.insert(*ip);
        }
        if let Some(ident) = self.idents.get_mut(&info.identity) {
            ident.pods -= 1;
            for np in &info.ports {
                if let Some(n) = ident.ports.get_mut(np) {
                    *n -= 1;
                    if *n == 0 {
                        ident.ports.remove(np);
                    }
                }
            }
            if ident.pods == 0 {
                emptied.push(info.identity);
            }
        }
    }

    /// A pod's identity and what policy needs of it; None for a pod that
    /// has no address of its own (host network) or is done.
    fn pod_info(&mut self, key: &str, p: &PodView, input: &PassInput<'_>) -> Option<(PodInfo, IdentityKey)> {
        if p.inert {
            return None;
        }
        let mut ips = p.ips.clone();
        ips.retain(|ip| input.owners.get(ip).is_none_or(|o| *o == key));
        if ips.is_empty()
            && let Some(a) = input.addresses.get(key)
        {
            ips = a.clone();
        }
        let mut nsl = input.ns_labels.get(&p.namespace).cloned().unwrap_or_default();
        nsl.insert(NAMESPACE_NAME_LABEL.into(), p.namespace.clone());
        let id_key = IdentityKey {
            namespace: p.namespace.clone(),
            pod_labels: restricted(&p.labels, input.pod_keys, &self.excluded),
            ns_labels: restricted(&nsl, input.ns_keys, &BTreeSet::new()),
        };
        let info = PodInfo {
            identity: self.identities.id(&id_key),
            ips,
            ports: p.ports.clone(),
        };
        Some((info, id_key))
    }

    /// The pass's `Desired` from the pods' translations: identities, the
    /// ipcache (with the addresses that moved, `moved`, when known), CIDRs,
    /// and the rules of the pods that get them.
    fn finish(&mut self, policies: &[&NetworkPolicy], d: &mut Desired, moved: Option<BTreeSet<IpAddr>>) {
        let pass = next_pass();
        d.ipcache_changes = moved.map(|m| (self.pass, m));
        d.pass = pass;
        self.pass = pass;
        d.ipcache = self.ipcache.clone();
        for (id, i) in &self.idents {
            d.identities.insert(*id, i.key.name());
        }

        // Every prefix of every ipBlock, excepts included, is an identity.
        let prefixes = cidr_prefixes(policies);
        self.cidrs.retain(&prefixes);
        for n in &prefixes {
            d.cidrs.insert(*n, self.cidrs.id(n));
        }

        let mut sorted = policies.to_vec();
        sorted.sort_by_key(|p| (namespace_of(&p.metadata), p.metadata.name.clone()));
        let live: BTreeSet<(String, String)> = sorted
            .iter()
            .map(|p| (namespace_of(&p.metadata), p.metadata.name.clone().unwrap_or_default()))
            .collect();
        self.policies.retain(&live);
        // Selectors are evaluated once per identity (a label set), not per
        // pod; a policy's subjects are looked for among the pods that get
        // rules, in its namespace.
        let pods: Vec<(&str, &PodInfo)> = match &self.local {
            Some(local) => {
                let mut seen = BTreeSet::new();
                local
                    .iter()
                    .filter_map(|ip| self.claims.get(ip))
                    .flatten()
                    .filter(|(key, _)| seen.insert(key.as_str()))
                    .filter_map(|(key, _)| Some((key.as_str(), self.pods.get(key)?.as_ref()?)))
                    .collect()
            }
            None => self
                .pods
                .iter()
                .filter_map(|(key, info)| Some((key.as_str(), info.as_ref()?)))
                .collect(),
        };
        let mut subjects: BTreeMap<&str, Vec<(&str, &PodInfo)>> = BTreeMap::new();
        for (key, info) in pods {
            if let Some(i) = self.idents.get(&info.identity) {
                subjects.entry(i.key.namespace.as_str()).or_default().push((key, info));
            }
        }
        let view = View {
            idents: &self.idents,
            subjects: &subjects,
        };
        for pol in sorted {
            policy(&mut self.policies, pol, &view, d);
        }
    }
}

/// The identity an address has among the pods claiming it: the last by
/// name, so that every node's agent picks the same one.
fn claimant(c: &[(String, u32)]) -> Option<&(String, u32)> {
    c.iter().max_by(|a, b| a.0.cmp(&b.0))
}

impl PassInput<'_> {
    fn new<'a>(basis: &'a Basis, addresses: &'a BTreeMap<String, Vec<IpAddr>>) -> PassInput<'a> {
        PassInput {
            ns_labels: &basis.2,
            pod_keys: &basis.0,
            ns_keys: &basis.1,
            addresses,
            owners: addresses
                .iter()
                .flat_map(|(k, ips)| ips.iter().map(move |ip| (*ip, k.as_str())))
                .collect(),
        }
    }
}

fn policy(ids: &mut IdAllocator<(String, String)>, pol: &NetworkPolicy, view: &View<'_>, d: &mut Desired) {
    let ns = namespace_of(&pol.metadata);
    let name = pol.metadata.name.clone().unwrap_or_default();
    let id = ids.id(&(ns.clone(), name.clone()));
    d.policies.insert(id, format!("{ns}/{name}"));
    let Some(spec) = &pol.spec else { return };
    let types: Vec<&str> = match &spec.policy_types {
        Some(t) if !t.is_empty() => t.iter().map(String::as_str).collect(),
        _ if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) => vec!["Ingress", "Egress"],
        _ => vec!["Ingress"],
    };
    let selector = spec.pod_selector.clone().unwrap_or_default();
    let subjects: Vec<(&str, &PodInfo)> = view
        .subjects
        .get(ns.as_str())
        .into_iter()
        .flatten()
        .copied()
        .filter(|(_, p)| {
            view.idents
                .get(&p.identity)
                .is_some_and(|i| matches(&selector, &i.key.pod_labels))
        })
        .collect();
    if subjects.is_empty() {
        return;
    }
    let what = format!("policy {ns}/{name}");
    // Each rule read once, applied to every subject.
    let mut rules: Vec<(Direction, Peers, Vec<RulePort>)> = Vec::new();
    if types.contains(&"Ingress") {
        for r in spec.ingress.iter().flatten() {
            let peers = peers(&ns, r.from.as_deref(), view.idents, d, &what);
            rules.push((Direction::Ingress, peers, ports(r.ports.as_deref(), d, &what)));
        }
    }
    if types.contains(&"Egress") {
        for r in spec.egress.iter().flatten() {
            let peers = peers(&ns, r.to.as_deref(), view.idents, d, &what);
            rules.push((Direction::Egress, peers, ports(r.ports.as_deref(), d, &what)));
        }
    }
    for (key, s) in subjects {
        let ep = d.endpoints.entry(key.to_string()).or_insert_with(|| EndpointPolicy {
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
            expand(*dir, peers, ports, s, view.idents, id, &mut ep.rules);
        }
    }
}

fn peers(
    policy_ns: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    idents: &BTreeMap<u32, Ident>,
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
        for (id, i) in idents {
            let key = &i.key;
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
