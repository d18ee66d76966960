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
//! - [`ids`]: the id allocator every map writer uses;
//! - [`netns_cookie`]: the cookie a network namespace is known by;
//! - [`node_addresses`]: the node's addresses its ports are served on;
//! - [`checksum`]: the internet checksum, for frames built in Rust.

pub mod attach;
pub mod checksum;
pub mod config;
mod hash;
pub mod ids;
pub mod jiffies;
pub mod layout;
pub mod loader;
pub mod maps;
pub mod migrate;
pub mod netns_cookie;
pub mod node_addresses;
pub mod pin;
pub mod raw_map;

/// The compiled eBPF object (both programs and every map).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath.o"));

/// For the crate's own tests that need root (the kernel's `bpf()`).
#[cfg(test)]
pub(crate) fn root_or_skip(test: &str, why: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    // Listed by scripts/test as skipped, not counted as passed.
    let line = format!("{test}: {why}");
    eprintln!("SKIP {line}");
    if let Ok(p) = std::env::var("SLUICE_SKIP_LOG") {
        use std::io::Write;
        let f = std::fs::OpenOptions::new().create(true).append(true).open(p);
        f.and_then(|mut f| writeln!(f, "{line}"))
            .expect("SLUICE_SKIP_LOG is writable");
    }
    false
}

#[cfg(test)]
mod tests {
    /// One licence story for the C: every source under bpf/ says it, the
    /// object tells the kernel the matching "Dual BSD/GPL", and both texts
    /// ship beside the sources.
    #[test]
    fn the_datapath_sources_carry_one_licence() {
        const SPDX: &str = "SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)";
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf");
        let mut sources = vec![];
        for d in [dir.clone(), dir.join("lib")] {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "c" || x == "h") {
                    sources.push(p);
                }
            }
        }
        assert!(sources.len() > 10, "{sources:?}");
        for p in &sources {
            let first = std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            assert!(first.contains(SPDX), "{}: {first}", p.display());
        }
        let obj = aya_obj::Object::parse(crate::OBJECT).unwrap();
        assert_eq!(obj.license.to_str().unwrap(), "Dual BSD/GPL");
        for f in ["LICENSE.GPL-2.0", "LICENSE.BSD-2-Clause"] {
            assert!(dir.join(f).is_file(), "{f} ships with the sources");
        }
    }
}
