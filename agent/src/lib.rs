//! `sluice-agent`: the node daemon that keeps a node's eBPF maps in step
//! with the cluster.
//!
//! - [`source`]: where objects come from (a manifest directory, or the API
//!   server's watchers), into typed Kubernetes [`objects`];
//! - [`services`]: Services and EndpointSlices to frontends
//!   ([`services::translate`]) and into the maps by difference
//!   ([`services::sync`]); NetworkPolicy goes through `sluice-policy`;
//! - [`agent`]: one node's state and its sync; [`daemon`]: the event loop;
//! - traffic from outside: the node's [`uplinks`], and the
//!   [`health_check`] node ports of `externalTrafficPolicy: Local`;
//! - housekeeping: expired conntrack entries ([`gc`]), pods gone without a
//!   CNI DEL ([`endpoint_gc`]), pods moved from clsact filters onto TCX
//!   links once the node is quiet ([`promote`]), and the interfaces a DEL
//!   left on their links deleted then ([`reap`]);
//! - what it tells: [`metrics`], flow events ([`flows`]), the kubelet's
//!   [`probes`] (over the small [`http`] server);
//! - [`eni_pool`]: the node's ENIs and addresses from the cloud (sluice-cloud's
//!   warm pool on a thread of its own);
//! - [`install`]: `sluice-install`, chaining sluice behind a node's plugin.

pub mod agent;
pub mod cni_conf;
pub mod daemon;
pub mod endpoint_gc;
pub mod eni_pool;
pub mod flows;
pub mod gc;
pub mod health_check;
pub mod http;
pub mod install;
pub mod metrics;
pub mod node_events;
pub mod objects;
pub mod probes;
pub mod promote;
pub mod proxy_health;
pub mod reap;
pub mod services;
pub mod source;
pub mod tables;
pub mod uplinks;
