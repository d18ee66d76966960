//! The Kubernetes objects the agent reads, typed (k8s-openapi), keyed by
//! namespace/name: what every source fills and every translation reads.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sluice_policy::PodView;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

/// One object of a kind the agent uses (boxed: a Pod is 2 KiB).
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    NetworkPolicy(Box<NetworkPolicy>),
    Pod(Box<Pod>),
    Namespace(Box<Namespace>),
    Node(Box<Node>),
}

impl Object {
    /// Only what the agent reads (a Pod's few fields: `slim_pod`).
    pub fn slimmed(self) -> Object {
        match self {
            Object::Pod(p) => Object::Pod(Box::new(slim_pod(*p))),
            o => o,
        }
    }

    /// (kind, "namespace/name" or "name" for cluster-scoped kinds).
    pub fn id(&self) -> (&'static str, String) {
        let (kind, meta) = match self {
            Object::Service(o) => ("Service", &o.metadata),
            Object::EndpointSlice(o) => ("EndpointSlice", &o.metadata),
            Object::NetworkPolicy(o) => ("NetworkPolicy", &o.metadata),
            Object::Pod(o) => ("Pod", &o.metadata),
            Object::Namespace(o) => ("Namespace", &o.metadata),
            Object::Node(o) => ("Node", &o.metadata),
        };
        (kind, key(meta))
    }
}

/// "namespace/name", or "name" without a namespace.
pub fn key(meta: &ObjectMeta) -> String {
    let name = meta.name.as_deref().unwrap_or("");
    match meta.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

/// The Service ("namespace/name") an EndpointSlice belongs to, by its label.
pub fn slice_service(s: &EndpointSlice) -> Option<String> {
    let svc = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(format!("{}/{svc}", s.metadata.namespace.as_deref().unwrap_or("")))
}

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Every object the agent knows, by kind and key, and what changed when:
/// every change bumps a generation, and the Services whose Service or
/// EndpointSlices changed carry the generation of their last change, so a
/// translation can redo only what changed since the generation it saw.
/// Objects change only through `insert` and `remove` (hence the accessors).
#[derive(Debug)]
pub struct Objects {
    services: BTreeMap<String, Service>,
    slices: BTreeMap<String, EndpointSlice>,
    policies: BTreeMap<String, NetworkPolicy>,
    /// Pods in the compact form policy reads (most of what the agent holds).
    pods: BTreeMap<String, PodView>,
    /// The Pods that can administer their own network (`administers_network`).
    net_admin_pods: BTreeSet<String>,
    namespaces: BTreeMap<String, Namespace>,
    nodes: BTreeMap<String, Node>,
    /// Service key -> its slices' keys.
    slices_of: BTreeMap<String, BTreeSet<String>>,
    generation: u64,
    /// Service key -> the generation of its last change (kept after the
    /// Service is gone, so that its removal is seen).
    service_changed: BTreeMap<String, u64>,
    /// The generation of the last change of a Node's addresses.
    nodes_changed: u64,
    /// Pod changes, in order: (generation, key); the oldest go past
    /// `POD_LOG` entries.
    pod_log: std::collections::VecDeque<(u64, String)>,
    /// The log holds every Pod change after this generation.
    pod_log_from: u64,
    /// Which store the generations count in: each store, clones included,
    /// gets its own, so that a translation never takes one store's
    /// generation for another's.
    store: u64,
}

/// Pod changes kept for `pods_changed_since`: a reader further behind
/// reads every Pod.
const POD_LOG: usize = 8192;

fn next_store() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Default for Objects {
    fn default() -> Objects {
        Objects {
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            policies: BTreeMap::new(),
            pods: BTreeMap::new(),
            net_admin_pods: BTreeSet::new(),
            namespaces: BTreeMap::new(),
            nodes: BTreeMap::new(),
            slices_of: BTreeMap::new(),
            generation: 0,
            service_changed: BTreeMap::new(),
            nodes_changed: 0,
            pod_log: Default::default(),
            pod_log_from: 0,
            store: next_store(),
        }
    }
}

impl Clone for Objects {
    fn clone(&self) -> Objects {
        Objects {
            services: self.services.clone(),
            slices: self.slices.clone(),
            policies: self.policies.clone(),
            pods: self.pods.clone(),
            net_admin_pods: self.net_admin_pods.clone(),
            namespaces: self.namespaces.clone(),
            nodes: self.nodes.clone(),
            slices_of: self.slices_of.clone(),
            generation: self.generation,
            service_changed: self.service_changed.clone(),
            nodes_changed: self.nodes_changed,
            pod_log: self.pod_log.clone(),
            pod_log_from: self.pod_log_from,
            store: next_store(),
        }
    }
}

/// Equal objects, whatever their history.
impl PartialEq for Objects {
    fn eq(&self, other: &Objects) -> bool {
        self.services == other.services
            && self.slices == other.slices
            && self.policies == other.policies
            && self.pods == other.pods
            && self.net_admin_pods == other.net_admin_pods
            && self.namespaces == other.namespaces
            && self.nodes == other.nodes
    }
}

fn node_addresses(n: &Node) -> Option<&Vec<k8s_openapi::api::core::v1::NodeAddress>> {
    n.status.as_ref()?.addresses.as_ref()
}

impl Objects {
    pub fn services(&self) -> &BTreeMap<String, Service> {
        &self.services
    }
    pub fn slices(&self) -> &BTreeMap<String, EndpointSlice> {
        &self.slices
    }
    pub fn policies(&self) -> &BTreeMap<String, NetworkPolicy> {
        &self.policies
    }
    pub fn pods(&self) -> &BTreeMap<String, PodView> {
        &self.pods
    }
    /// Whether the Pod `key` ("namespace/name") can administer its own
    /// network: None for a Pod this store does not hold.
    pub fn pod_administers_network(&self, key: &str) -> Option<bool> {
        self.pods.contains_key(key).then(|| self.net_admin_pods.contains(key))
    }
    pub fn namespaces(&self) -> &BTreeMap<String, Namespace> {
        &self.namespaces
    }
    pub fn nodes(&self) -> &BTreeMap<String, Node> {
        &self.nodes
    }

    /// The slices of the Service `service` ("namespace/name").
    pub fn slices_of(&self, service: &str) -> impl Iterator<Item = &EndpointSlice> {
        self.slices_of
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
    }

    /// The generation of the last change, and the store it counts in.
    pub fn generation(&self) -> (u64, u64) {
        (self.store, self.generation)
    }

    /// The Services (keys, present or gone) changed after generation `since`.
    pub fn services_changed_since(&self, since: u64) -> impl Iterator<Item = &str> {
        self.service_changed
            .iter()
            .filter(move |(_, g)| **g > since)
            .map(|(k, _)| k.as_str())
    }

    /// The generation of the last change of a Node's addresses.
    /// The Pods inserted, changed or removed after generation `since`;
    /// None when the log no longer reaches back that far.
    pub fn pods_changed_since(&self, since: u64) -> Option<impl Iterator<Item = &str>> {
        (since >= self.pod_log_from).then(|| {
            self.pod_log
                .iter()
                .skip_while(move |(g, _)| *g <= since)
                .map(|(_, k)| k.as_str())
        })
    }

    fn pod_touched(&mut self, key: &str) {
        self.pod_log.push_back((self.generation, key.to_string()));
        if self.pod_log.len() > POD_LOG
            && let Some((g, _)) = self.pod_log.pop_front()
        {
            self.pod_log_from = g;
        }
    }

    pub fn nodes_changed(&self) -> u64 {
        self.nodes_changed
    }

    fn service_touched(&mut self, key: &str) {
        self.service_changed.insert(key.to_string(), self.generation);
    }

    fn slice_moved(&mut self, key: &str, old: Option<String>, new: Option<String>) {
        if let Some(o) = &old
            && let Some(set) = self.slices_of.get_mut(o)
        {
            set.remove(key);
            if set.is_empty() {
                self.slices_of.remove(o);
            }
        }
        if let Some(n) = &new {
            self.slices_of.entry(n.clone()).or_default().insert(key.to_string());
        }
        for svc in old.iter().chain(new.iter()) {
            self.service_touched(svc);
        }
    }

    /// Add or replace an object (the later of two with one key wins). An
    /// object equal to the one it replaces changes nothing.
    pub fn insert(&mut self, o: Object) {
        let o = o.slimmed();
        let (_, k) = o.id();
        fn same<T: PartialEq>(m: &BTreeMap<String, T>, k: &str, o: &T) -> bool {
            m.get(k) == Some(o)
        }
        let unchanged = match &o {
            Object::Service(o) => same(&self.services, &k, o),
            Object::EndpointSlice(o) => same(&self.slices, &k, o),
            Object::NetworkPolicy(o) => same(&self.policies, &k, o),
            Object::Pod(o) => {
                same(&self.pods, &k, &PodView::from(&**o)) && self.net_admin_pods.contains(&k) == administers_network(o)
            }
            Object::Namespace(o) => same(&self.namespaces, &k, o),
            Object::Node(o) => same(&self.nodes, &k, o),
        };
        if unchanged {
            return;
        }
        self.generation += 1;
        match o {
            Object::Service(o) => {
                self.services.insert(k.clone(), *o);
                self.service_touched(&k);
            }
            Object::EndpointSlice(o) => {
                let new = slice_service(&o);
                let old = self.slices.insert(k.clone(), *o).as_ref().and_then(slice_service);
                self.slice_moved(&k, old, new);
            }
            Object::NetworkPolicy(o) => drop(self.policies.insert(k, *o)),
            Object::Pod(o) => {
                self.pod_touched(&k);
                if administers_network(&o) {
                    self.net_admin_pods.insert(k.clone());
                } else {
                    self.net_admin_pods.remove(&k);
                }
                self.pods.insert(k, PodView::from(&*o));
            }
            Object::Namespace(o) => drop(self.namespaces.insert(k, *o)),
            Object::Node(o) => {
                let new = node_addresses(&o).cloned();
                let old = self.nodes.insert(k, *o);
                if old.as_ref().and_then(node_addresses) != new.as_ref() {
                    self.nodes_changed = self.generation;
                }
            }
        }
    }

    /// Remove the object of `kind` under `key`.
    pub fn remove(&mut self, kind: &str, key: &str) {
        let present = match kind {
            "Service" => self.services.contains_key(key),
            "EndpointSlice" => self.slices.contains_key(key),
            "NetworkPolicy" => self.policies.contains_key(key),
            "Pod" => self.pods.contains_key(key),
            "Namespace" => self.namespaces.contains_key(key),
            "Node" => self.nodes.contains_key(key),
            _ => false,
        };
        if !present {
            return;
        }
        self.generation += 1;
        match kind {
            "Service" => {
                self.services.remove(key);
                self.service_touched(key);
            }
            "EndpointSlice" => {
                let old = self.slices.remove(key).as_ref().and_then(slice_service);
                self.slice_moved(key, old, None);
            }
            "NetworkPolicy" => drop(self.policies.remove(key)),
            "Pod" => {
                self.pods.remove(key);
                self.net_admin_pods.remove(key);
                self.pod_touched(key);
            }
            "Namespace" => drop(self.namespaces.remove(key)),
            "Node" => {
                let had_addresses = self.nodes.remove(key).as_ref().and_then(node_addresses).is_some();
                if had_addresses {
                    self.nodes_changed = self.generation;
                }
            }
            _ => {}
        }
    }

    /// The keys of every object of `kind`.
    pub fn keys(&self, kind: &str) -> Vec<String> {
        fn of<T>(m: &BTreeMap<String, T>) -> Vec<String> {
            m.keys().cloned().collect()
        }
        match kind {
            "Service" => of(&self.services),
            "EndpointSlice" => of(&self.slices),
            "NetworkPolicy" => of(&self.policies),
            "Pod" => of(&self.pods),
            "Namespace" => of(&self.namespaces),
            "Node" => of(&self.nodes),
            _ => Vec::new(),
        }
    }
}

/// What the agent reads of a Pod, and nothing else: its name, namespace
/// and labels, whether it has the host's network, its containers' named
/// ports, its phase and addresses, and the security contexts that let a
/// container administer the pod's network (`administers_network`). A cluster's Pods are most of what the
/// agent holds, and a full object (managed fields, annotations, env,
/// volumes, conditions) is several times that.
pub fn slim_pod(p: Pod) -> Pod {
    use k8s_openapi::api::core::v1::{Container, ContainerPort, EphemeralContainer, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let spec = p.spec.map(|s| PodSpec {
        host_network: s.host_network,
        node_name: s.node_name,
        containers: s
            .containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                ports: c.ports.map(|ps| {
                    ps.into_iter()
                        .filter(|p| p.name.is_some())
                        .map(|p| ContainerPort {
                            name: p.name,
                            container_port: p.container_port,
                            protocol: p.protocol,
                            ..Default::default()
                        })
                        .collect()
                }),
                security_context: net_admin_context(c.security_context),
                ..Default::default()
            })
            .collect(),
        init_containers: s.init_containers.map(|cs| {
            cs.into_iter()
                .filter_map(|c| {
                    Some(Container {
                        name: c.name,
                        security_context: Some(net_admin_context(c.security_context)?),
                        ..Default::default()
                    })
                })
                .collect()
        }),
        ephemeral_containers: s.ephemeral_containers.map(|cs| {
            cs.into_iter()
                .filter_map(|c| {
                    Some(EphemeralContainer {
                        name: c.name,
                        security_context: Some(net_admin_context(c.security_context)?),
                        ..Default::default()
                    })
                })
                .collect()
        }),
        ..Default::default()
    });
    let status = p.status.map(|s| PodStatus {
        phase: s.phase,
        pod_ip: s.pod_ip,
        pod_ips: s.pod_ips,
        ..Default::default()
    });
    Pod {
        metadata: ObjectMeta {
            name: p.metadata.name,
            namespace: p.metadata.namespace,
            labels: p.metadata.labels,
            ..Default::default()
        },
        spec,
        status,
    }
}

/// Whether a container with this security context may administer its
/// pod's network namespace: privileged, or `NET_ADMIN` (or `ALL`) added.
/// Such a container can take a clsact filter off the pod's interface,
/// which it cannot do to a pinned TCX link.
fn grants_net_admin(sc: &k8s_openapi::api::core::v1::SecurityContext) -> bool {
    sc.privileged == Some(true)
        || sc
            .capabilities
            .as_ref()
            .and_then(|c| c.add.as_ref())
            .into_iter()
            .flatten()
            .any(|cap| {
                let cap = cap.to_ascii_uppercase();
                let cap = cap.strip_prefix("CAP_").unwrap_or(&cap);
                cap == "NET_ADMIN" || cap == "ALL"
            })
}

/// The part of a security context `administers_network` reads, if it
/// grants network administration; None otherwise (a slimmed Pod keeps no
/// other security context).
fn net_admin_context(
    sc: Option<k8s_openapi::api::core::v1::SecurityContext>,
) -> Option<k8s_openapi::api::core::v1::SecurityContext> {
    use k8s_openapi::api::core::v1::{Capabilities, SecurityContext};
    let sc = sc.filter(grants_net_admin)?;
    Some(SecurityContext {
        privileged: sc.privileged.filter(|p| *p),
        capabilities: sc.capabilities.map(|c| Capabilities { add: c.add, drop: None }),
        ..Default::default()
    })
}

/// Whether any container of the Pod (init and ephemeral ones included:
/// `kubectl debug --profile=netadmin` adds one with `NET_ADMIN` to a
/// running pod) may administer the pod's network. The container runtime's
/// default capabilities do not include `NET_ADMIN` (containerd's, CRI-O's
/// and Docker's); a runtime configured to add it makes every pod such a
/// pod, which the agent cannot see (`--tcx-links all`).
pub fn administers_network(p: &Pod) -> bool {
    let Some(spec) = &p.spec else { return false };
    let plain = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter_map(|c| c.security_context.as_ref());
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .filter_map(|c| c.security_context.as_ref());
    plain.chain(ephemeral).any(grants_net_admin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    const PLAIN: &str = "
metadata: {name: web, namespace: shop}
spec:
  containers:
  - name: web
    securityContext: {runAsUser: 1000, capabilities: {add: [NET_BIND_SERVICE], drop: [ALL]}}
";

    /// What can take a clsact filter off the pod's interface, in every
    /// kind of container, and what cannot; a slimmed Pod still tells.
    #[test]
    fn network_administration_is_read_from_every_container_and_kept_by_slimming() {
        let granting = [
            "spec: {containers: [{name: a, securityContext: {capabilities: {add: [NET_ADMIN]}}}]}",
            "spec: {containers: [{name: a, securityContext: {capabilities: {add: [CAP_NET_ADMIN]}}}]}",
            "spec: {containers: [{name: a, securityContext: {capabilities: {add: [all]}}}]}",
            "spec: {containers: [{name: a, securityContext: {privileged: true}}]}",
            "spec: {containers: [{name: a}], initContainers: [{name: i, securityContext: {capabilities: {add: [NET_ADMIN]}}}]}",
            "spec: {containers: [{name: a}], ephemeralContainers: [{name: debug, securityContext: {capabilities: {add: [NET_ADMIN, NET_RAW]}}}]}",
        ];
        for y in granting {
            let p = pod(&format!("metadata: {{name: p, namespace: n}}\n{y}"));
            assert!(administers_network(&p), "{y}");
            assert!(administers_network(&slim_pod(p)), "slimmed: {y}");
        }
        let not = [
            PLAIN,
            "spec: {containers: [{name: a, securityContext: {privileged: false, capabilities: {add: [NET_RAW, SYS_TIME]}}}]}",
            "spec: {containers: [{name: a}], initContainers: [{name: i, securityContext: {runAsUser: 0}}]}",
            "metadata: {name: p}",
        ];
        for y in not {
            assert!(!administers_network(&pod(y)), "{y}");
            assert!(!administers_network(&slim_pod(pod(y))), "slimmed: {y}");
        }
        // Slimming keeps nothing else of a security context.
        let slim = slim_pod(pod(PLAIN));
        assert_eq!(slim.spec.unwrap().containers[0].security_context, None);
    }

    /// A Pod gaining `NET_ADMIN` (an ephemeral container added) is a
    /// change of the store, and the store says so; an unknown Pod is None.
    #[test]
    fn a_pod_gaining_net_admin_is_a_change() {
        let mut o = Objects::default();
        o.insert(Object::Pod(Box::new(pod(PLAIN))));
        assert_eq!(o.pod_administers_network("shop/web"), Some(false));
        assert_eq!(o.pod_administers_network("shop/other"), None);
        let (_, before) = o.generation();
        let mut debugged = pod(PLAIN);
        debugged.spec.as_mut().unwrap().ephemeral_containers = Some(vec![
            serde_yaml_ng::from_str("{name: debug, securityContext: {capabilities: {add: [NET_ADMIN]}}}").unwrap(),
        ]);
        o.insert(Object::Pod(Box::new(debugged)));
        assert_eq!(o.pod_administers_network("shop/web"), Some(true));
        assert_eq!(o.pods_changed_since(before).unwrap().collect::<Vec<_>>(), ["shop/web"]);
        o.remove("Pod", "shop/web");
        assert_eq!(o.pod_administers_network("shop/web"), None);
    }
}
