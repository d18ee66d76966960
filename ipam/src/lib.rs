//! sluice IPAM: host-local compatible range allocation with a durable,
//! crash-safe lease store, usable in-process (the `sluice` main role) and as
//! the `sluice-ipam` CNI IPAM plugin.

pub mod cni;
pub mod config;
pub mod eni;
pub mod error;
pub mod listing;
pub mod pool;
pub mod range;
pub mod rebuild;
pub mod store;

pub use config::{IpamConfig, RouteConfig, requested_ips};
pub use error::IpamError;
pub use pool::{Allocation, Pool};
