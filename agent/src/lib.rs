//! `sluice-agent`: the node daemon that keeps a node's eBPF maps in step
//! with the cluster. Sources (a manifest directory today) fill typed
//! Kubernetes objects ([`objects`]); Services and EndpointSlices become
//! frontends ([`services`]), NetworkPolicy goes through `sluice-policy`;
//! both are written as differences ([`reconcile`], `NodeApplier`); expired
//! conntrack entries are collected ([`gc`]).

pub mod agent;
pub mod endpoint_gc;
pub mod flows;
pub mod gc;
pub mod install;
pub mod kube_source;
pub mod manifests;
pub mod metrics;
pub mod objects;
pub mod reconcile;
pub mod services;
