//! The `sluice` CNI plugin.
//!
//! Two roles, chosen by the config: **main** (a `link` section: sluice
//! creates the pod interface as macvlan, ipvlan or a whole ENI, and gets its
//! addresses from IPAM) and **chained** (no `link`: the plugin before us made
//! the interface; we verify it, record the endpoint and pass the result on).

pub mod chained;
pub mod config;
pub mod datapath;
pub mod endpoint;
pub mod fault;
pub mod garp;
pub mod host_path;
pub mod host_port;
pub mod ipam;
pub mod link;
pub mod lock;
pub mod log;
pub mod main_role;
pub mod netlink;
pub mod netns;
pub mod plugin;
pub mod pod_setup;
pub mod policy_hold;
