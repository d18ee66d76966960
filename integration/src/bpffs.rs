//! A private bpffs instance per simulated node: each mount of bpffs is a
//! filesystem of its own, so a node's pinned maps, programs and links are
//! invisible to every other node and test, and unmounting it (on drop)
//! releases them all. Mounted outside /sys, because `ip netns exec` gives
//! its command a fresh /sys.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

pub struct Bpffs {
    mount: PathBuf,
}

impl Bpffs {
    pub fn new(tag: &str) -> Result<Bpffs> {
        let mount = std::env::temp_dir().join(format!("{}-bpffs", crate::unique_prefix(tag)));
        std::fs::create_dir_all(&mount).with_context(|| format!("creating {}", mount.display()))?;
        nix::mount::mount(
            Some("bpf"),
            &mount,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting bpffs on {}", mount.display()))?;
        Ok(Bpffs { mount })
    }

    /// The datapath root to give sluice.
    pub fn root(&self) -> PathBuf {
        self.mount.join("sluice")
    }

    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// The plugin config's `"datapath"` section for this node: TCX links
    /// at ADD, whose pins the tests count (the default, `auto`, attaches
    /// filters and leaves the links to the agent: tests/promotion.rs).
    pub fn datapath(&self) -> Value {
        json!({"bpffs": self.root(), "attach": "tcx"})
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.mount, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.mount);
    }
}
