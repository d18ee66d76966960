//! The sluice eBPF datapath: tc programs written in C (`bpf/`), built by
//! build.rs with clang, and the Rust side that loads, pins, attaches and
//! programs them. Knows nothing of Kubernetes or CNI.
//!
//! - [`config`]: the datapath's settings, defined once;
//! - [`layout`]: the Rust mirrors of `bpf/layout.h`;
//! - [`loader`]: loading and verifying the object, pinning its maps;
//! - [`attach`]: a node's pinned programs and their links on interfaces;
//! - [`maps`]: typed access to the maps, one module per family;
//! - [`pin`]: where things live on bpffs;
//! - [`ids`]: the id allocator every map writer uses.

pub mod attach;
pub mod config;
mod hash;
pub mod ids;
pub mod layout;
pub mod loader;
pub mod maps;
pub mod pin;

/// The compiled eBPF object (both programs and every map).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath.o"));
