//! The Kubernetes objects the agent reads, typed (k8s-openapi), keyed by
//! namespace/name: what every source fills and every translation reads.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

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

/// Every object the agent knows, by kind and key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Objects {
    pub services: BTreeMap<String, Service>,
    pub slices: BTreeMap<String, EndpointSlice>,
    pub policies: BTreeMap<String, NetworkPolicy>,
    pub pods: BTreeMap<String, Pod>,
    pub namespaces: BTreeMap<String, Namespace>,
    pub nodes: BTreeMap<String, Node>,
}

impl Objects {
    /// Add or replace an object (the later of two with one key wins).
    pub fn insert(&mut self, o: Object) {
        let (_, k) = o.id();
        match o {
            Object::Service(o) => drop(self.services.insert(k, *o)),
            Object::EndpointSlice(o) => drop(self.slices.insert(k, *o)),
            Object::NetworkPolicy(o) => drop(self.policies.insert(k, *o)),
            Object::Pod(o) => drop(self.pods.insert(k, *o)),
            Object::Namespace(o) => drop(self.namespaces.insert(k, *o)),
            Object::Node(o) => drop(self.nodes.insert(k, *o)),
        }
    }

    /// Remove the object of `kind` under `key`.
    pub fn remove(&mut self, kind: &str, key: &str) {
        match kind {
            "Service" => drop(self.services.remove(key)),
            "EndpointSlice" => drop(self.slices.remove(key)),
            "NetworkPolicy" => drop(self.policies.remove(key)),
            "Pod" => drop(self.pods.remove(key)),
            "Namespace" => drop(self.namespaces.remove(key)),
            "Node" => drop(self.nodes.remove(key)),
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
