//! Root-only end-to-end tests and benchmarks for sluice, in network
//! namespaces the tests create and always delete (see the safety rules in
//! ENVIRONMENT.md): no root-namespace routes, firewall or links are touched.

pub mod agent;
pub mod api_server;
pub mod bench;
pub mod bpffs;
pub mod cgroup;
pub mod chain;
pub mod cni;
pub mod cri;
pub mod datapath;
pub mod ec2sim;
pub mod fuzz;
pub mod kube_proxy;
pub mod netns;
pub mod podman;
pub mod probe;
pub mod services;
pub mod vpc;

use std::path::PathBuf;

/// Report a test that cannot run here. It prints the reason and appends it
/// to `$SLUICE_SKIP_LOG`, which the test script lists after the run as
/// skipped, so a skip is never mistaken for a pass of what it would show.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIP {test}: {reason}");
    if let Ok(path) = std::env::var("SLUICE_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{test}: {reason}");
        }
    }
}

/// The first of `tools` not on the PATH, as a skip reason with `hint`
/// (the apt packages that bring them).
pub fn missing_tool(tools: &[&str], hint: &str) -> Option<String> {
    tools
        .iter()
        .find(|t| {
            !std::process::Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|t| format!("{t} is not installed (apt: {hint})"))
}

/// Tests need root for namespaces.
pub fn require_root(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        skip(test, "needs root (network namespaces)");
    }
    root
}

/// Directory with the workspace's built binaries (`target/debug` or `target/release`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    with_cni_pair(
        dir,
        "build the workspace binaries first (cargo build --workspace --bins)",
    )
}

/// Where the CNI binaries under test are: `$SLUICE_CNI_BIN_DIR` when set
/// (`scripts/test` sets it to the static pair `scripts/build-cni` makes,
/// the binaries a node gets), else the workspace's own build ([`bin_dir`]).
pub fn cni_bin_dir() -> PathBuf {
    match std::env::var_os("SLUICE_CNI_BIN_DIR") {
        Some(dir) => with_cni_pair(
            PathBuf::from(dir),
            "SLUICE_CNI_BIN_DIR names a directory without it (scripts/build-cni)",
        ),
        None => bin_dir(),
    }
}

/// `dir`, once it holds `sluice` and `sluice-ipam`; else a panic naming the
/// missing one and `fix`.
fn with_cni_pair(dir: PathBuf, fix: &str) -> PathBuf {
    for b in ["sluice", "sluice-ipam"] {
        assert!(dir.join(b).is_file(), "{} missing: {fix}", dir.join(b).display());
    }
    dir
}

/// CNI_PATH: our binaries first, then Debian's reference plugins.
pub fn cni_path() -> String {
    format!("{}:/usr/lib/cni", cni_bin_dir().display())
}

pub fn reference_plugins_present() -> bool {
    ["macvlan", "host-local"]
        .iter()
        .all(|p| std::path::Path::new("/usr/lib/cni").join(p).is_file())
}

/// Whether Debian's reference macvlan and host-local are installed; if
/// not, `test` logs an explicit skip saying which package to install.
pub fn require_reference_plugins(test: &str) -> bool {
    let present = reference_plugins_present();
    if !present {
        skip(
            test,
            "/usr/lib/cni/macvlan or host-local missing (apt containernetworking-plugins)",
        );
    }
    present
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

/// The entry names of a directory, sorted; none when it does not exist.
pub fn dir_names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
