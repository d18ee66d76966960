//! Kubernetes `networking.k8s.io/v1` NetworkPolicy for sluice: Pods,
//! Namespaces and NetworkPolicies (typed k8s-openapi objects) become
//! identities, an ipcache and per-endpoint allow rules
//! ([`translate`]), which [`apply`] writes into a node's pinned maps as a
//! difference from what they hold. The agent feeds it from the API server
//! or from manifests on disk; the tc programs enforce it.

pub mod apply;
pub mod selector;
pub mod translate;

pub use apply::{ApplyStats, NodeApplier};
pub use translate::{Desired, EndpointPolicy, NamedPort, PodView, Translator};
