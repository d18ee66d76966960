//! Root-only end-to-end tests and benchmarks for sluice, in network
//! namespaces the tests create and always delete (see the safety rules in
//! ENVIRONMENT.md): no root-namespace routes, firewall or links are touched.

pub mod chain;
pub mod cni;
pub mod netns;
pub mod probe;
pub mod vpc;

use std::path::PathBuf;

/// Tests need root for namespaces. Without it they print a skip and return
/// early: a skip is never reported as a pass of what it would have shown.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("SKIP {test}: needs root (network namespaces)");
        false
    }
}

/// Directory with the workspace's built binaries (`target/debug` or `target/release`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    for b in ["sluice", "sluice-ipam"] {
        assert!(
            dir.join(b).is_file(),
            "{} missing: build the workspace binaries first (cargo build --workspace --bins)",
            dir.join(b).display()
        );
    }
    dir
}

/// CNI_PATH: our binaries first, then Debian's reference plugins.
pub fn cni_path() -> String {
    format!("{}:/usr/lib/cni", bin_dir().display())
}

pub fn reference_plugins_present() -> bool {
    ["macvlan", "host-local"]
        .iter()
        .all(|p| std::path::Path::new("/usr/lib/cni").join(p).is_file())
}

/// A short prefix unique to this process and call, for namespace names.
pub fn unique_prefix(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "sl{}{}{}",
        std::process::id() % 100_000,
        tag,
        N.fetch_add(1, Ordering::Relaxed)
    )
}
