//! ENIs and addresses from the cloud: the agent's warm pool behind the ENI
//! node file the CNI plugin allocates from (the plugin never calls the
//! cloud).
//!
//! - [`api`]: what the pool needs from a cloud ([`api::Cloud`]);
//! - [`ec2`]: EC2's Query API, signed with SigV4, over [`http`]; the
//!   instance metadata service in [`imds`]; retries in [`retry`];
//! - [`limits`]: ENIs and addresses per instance type;
//! - [`pool`]: targets, growth, release after a cooldown, leak collection;
//! - [`node`]: the leases and the node file, under the lease store's lock;
//! - [`config`], [`metrics`].

pub mod api;
pub mod config;
pub mod ec2;
pub mod http;
pub mod imds;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod pool;
pub mod retry;

pub use api::{Cloud, CloudError};
pub use config::PoolConfig;
pub use pool::{EniPool, PassReport, PoolError};
