//! Named network namespaces owned by a test, deleted on drop (on every
//! path, panics included), and helpers to run code or commands inside them.

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Output};

pub struct Netns {
    pub name: String,
}

pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Netns {
    pub fn new(name: &str) -> Result<Netns> {
        ip(&["netns", "add", name])?;
        let ns = Netns { name: name.to_string() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// `ip -n NAME ...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        ip(&a)
    }

    /// A command run inside the namespace (`ip netns exec`).
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        self.cmd(program)
            .args(args)
            .output()
            .with_context(|| format!("{program} in {}", self.name))
    }

    /// Run `f` on a thread inside this namespace (sockets made there stay there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file = File::open(self.path()).with_context(|| format!("open {}", self.path().display()))?;
        std::thread::scope(|s| {
            s.spawn(|| -> Result<T> {
                setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))?
        })
    }

    pub fn link_names(&self) -> Result<Vec<String>> {
        let out = self.ip(&["-o", "link", "show"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .collect())
    }

    /// What netfilter holds in this namespace: conntrack entries, iptables
    /// rules, an nftables ruleset (empty when sluice kept it out, as it
    /// must).
    pub fn netfilter(&self) -> Result<Vec<String>> {
        let mut found = Vec::new();
        let ct = self.exec("conntrack", &["-L"])?;
        found.extend(
            String::from_utf8_lossy(&ct.stdout)
                .lines()
                .map(|l| format!("conntrack: {l}")),
        );
        let ipt = self.exec("iptables-save", &[])?;
        found.extend(
            String::from_utf8_lossy(&ipt.stdout)
                .lines()
                .filter(|l| l.starts_with("-A"))
                .map(|l| format!("iptables: {l}")),
        );
        let nft = self.exec("nft", &["list", "ruleset"])?;
        found.extend(
            String::from_utf8_lossy(&nft.stdout)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| format!("nft: {l}")),
        );
        Ok(found)
    }

    pub fn addrs(&self, dev: &str) -> Result<Vec<String>> {
        let out = self.ip(&["-o", "addr", "show", "dev", dev])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                it.position(|w| w == "inet" || w == "inet6")?;
                it.next().map(str::to_string)
            })
            .collect())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
