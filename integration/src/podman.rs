//! podman as the tests drive it: storage, run state and configuration of
//! its own under one directory (vfs storage, so no overlay mount outlives
//! a test), runc under cgroupfs, and resource limits runc may set here.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why podman cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    crate::missing_tool(&["podman", "runc", "conmon", "nsenter"], "podman runc conmon")
}

pub struct Podman {
    dir: PathBuf,
    conf: PathBuf,
}

impl Podman {
    /// A podman whose state lives under `dir`; `extra_conf` is appended to
    /// its containers.conf (a `[network]` section, say).
    pub fn new(dir: &Path, extra_conf: &str) -> Result<Podman> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let conf = dir.join("containers.conf");
        // The defaults ask runc for limits above this machine's hard ones.
        let text = format!(
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n{extra_conf}"
        );
        std::fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
        Ok(Podman {
            dir: dir.to_path_buf(),
            conf,
        })
    }

    /// The global options that select this podman's state (also what
    /// `scripts/image` takes as `$PODMAN_OPTS`).
    pub fn options(&self) -> Vec<String> {
        vec![
            "--root".into(),
            self.dir.join("storage").display().to_string(),
            "--runroot".into(),
            self.dir.join("run").display().to_string(),
            "--storage-driver".into(),
            "vfs".into(),
        ]
    }

    /// `podman <options>`, bounded to two minutes, run in the network
    /// namespace `netns` when given (with nsenter: `ip netns exec` remounts
    /// /sys and runc then finds no cgroups).
    pub fn command(&self, netns: Option<&Path>) -> Command {
        let mut c = Command::new("timeout");
        c.arg("120");
        if let Some(ns) = netns {
            c.arg("nsenter").arg(format!("--net={}", ns.display()));
        }
        c.arg("podman").args(self.options()).env("CONTAINERS_CONF", &self.conf);
        c
    }

    /// Set a command's environment so that it runs this podman (for scripts).
    pub fn env(&self, c: &mut Command) {
        c.env("PODMAN_OPTS", self.options().join(" "))
            .env("CONTAINERS_CONF", &self.conf);
    }
}
