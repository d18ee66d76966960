//! The CNI specification as Rust types: configuration header, results of
//! every supported version, error objects with the spec's codes, the CNI_*
//! environment, plugin delegation, and `skel`, the entry point that turns a
//! process invocation into one call of a [`skel::Plugin`] method.
//!
//! Shared by the `sluice` plugin and the `sluice-ipam` IPAM plugin.

pub mod conf;
pub mod delegate;
pub mod env;
pub mod error;
pub mod result;
pub mod skel;
pub mod version;

pub use conf::NetConfHeader;
pub use env::{Command, Invocation};
pub use error::{CniError, ErrorCode};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
