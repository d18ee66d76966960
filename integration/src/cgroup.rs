//! A cgroup v2 of the test's own, under the machine's cgroup2 mount, for
//! the socket-level hooks: only processes the test puts in it are ever
//! translated, never anything else on the machine. Removed when dropped
//! (its processes are the test's, and gone by then).

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Where this machine mounts cgroup v2 (hybrid layouts put it under
/// `unified`).
pub fn cgroup2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists() && is_cgroup2(p))
}

fn is_cgroup2(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new(prefix: &str) -> Result<TestCgroup> {
        let root = cgroup2_root().context("no cgroup v2 mount")?;
        let path = root.join(format!("{prefix}-sock"));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TestCgroup { path })
    }

    /// A command line that moves a shell into this cgroup, then execs
    /// `argv` (so the program's sockets are born in it). Enter a namespace
    /// after this, with `nsenter`: `ip netns exec` mounts a sysfs of its
    /// own over /sys, hiding the cgroup mount.
    pub fn exec_in(&self, argv: &[&str]) -> Vec<String> {
        let mut script = format!("echo $$ > '{}/cgroup.procs' && exec", self.path.display());
        for a in argv {
            script.push_str(&format!(" '{a}'"));
        }
        vec!["sh".into(), "-c".into(), script]
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// `sock-client args...` (the socket-level test client) in namespace `ns`,
/// inside `cg` when given: its one JSON line.
pub fn sock_client(ns: &crate::netns::Netns, cg: Option<&TestCgroup>, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new("sh")
        .args(&sock_client_argv(ns, cg, args)[1..])
        .output()
        .expect("running sock-client");
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).unwrap_or_else(|e| {
        panic!(
            "sock-client {args:?}: {e}: {line:?} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The command line of `sock-client args...` in `ns`, inside `cg` when
/// given (a shell's, so it starts with "sh"). nsenter rather than `ip
/// netns exec`, which mounts a sysfs of its own over the cgroup mount.
pub fn sock_client_argv(ns: &crate::netns::Netns, cg: Option<&TestCgroup>, args: &[&str]) -> Vec<String> {
    let bin = crate::bin_dir().join("sock-client").display().to_string();
    let net = format!("--net={}", ns.path().display());
    let mut inner = vec!["nsenter", &net, "--", &bin];
    inner.extend_from_slice(args);
    match cg {
        Some(cg) => cg.exec_in(&inner),
        None => {
            let quoted: Vec<String> = inner.iter().map(|a| format!("'{a}'")).collect();
            vec!["sh".into(), "-c".into(), format!("exec {}", quoted.join(" "))]
        }
    }
}
