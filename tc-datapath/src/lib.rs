//! The sluice eBPF datapath: tc programs written in C (`bpf/`), built by
//! build.rs with clang, and the Rust side that loads, pins, attaches and
//! programs them. Knows nothing of Kubernetes or CNI.

pub mod attach;
pub mod layout;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod pin;

/// The compiled eBPF object (both programs and every map).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath.o"));
