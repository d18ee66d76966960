//! Executing a CNI plugin exactly as a runtime does: environment + stdin.

use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

#[derive(Debug)]
pub struct CniOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CniOutput {
    pub fn of(out: std::process::Output) -> CniOutput {
        CniOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn json(&self) -> Value {
        if self.stdout.trim().is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// The error code of a failed call; panics (with the output) otherwise.
    pub fn error_code(&self) -> u64 {
        assert!(!self.success, "expected failure, got success: {}", self.stdout);
        self.json()["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no error code in {:?}", self.stdout))
    }

    pub fn expect_ok(self, what: &str) -> CniOutput {
        assert!(
            self.success,
            "{what} failed: stdout={} stderr={}",
            self.stdout, self.stderr
        );
        self
    }
}

/// One call. `env` are the CNI_* variables; `in_netns` is the namespace the
/// plugin runs in (a simulated node), or None for the caller's.
pub struct Call<'a> {
    pub plugin: &'a Path,
    pub in_netns: Option<&'a str>,
    pub env: Vec<(String, String)>,
}

impl<'a> Call<'a> {
    pub fn new(plugin: &'a Path, in_netns: Option<&'a str>) -> Self {
        Call {
            plugin,
            in_netns,
            env: Vec::new(),
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    pub fn standard(self, command: &str, container_id: &str, netns: &str, ifname: &str) -> Self {
        self.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", &crate::cni_path())
    }

    pub fn run(&self, stdin: &[u8]) -> CniOutput {
        let mut child = self.spawn();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        CniOutput::of(child.wait_with_output().expect("wait plugin"))
    }

    /// Start the plugin without feeding it: it blocks reading its config
    /// from stdin, so many spawned calls start together when fed together.
    pub fn spawn(&self) -> std::process::Child {
        let mut cmd = match self.in_netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(self.plugin);
                c
            }
            None => Command::new(self.plugin),
        };
        // Only what a runtime passes: no CNI_* leaks from the test's own environment.
        for (k, _) in std::env::vars() {
            if k.starts_with("CNI_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn plugin")
    }
}

/// One timed call for benchmarks: a clean environment with only the CNI
/// variables (no `ip netns exec` in between), the config on stdin. Fails
/// with the plugin's output when it does; returns its stdout otherwise.
pub fn exec_timed(
    plugin: &Path,
    cmd: &str,
    container_id: &str,
    netns: &Path,
    cni_path: &str,
    conf: &[u8],
) -> anyhow::Result<(std::time::Duration, Vec<u8>)> {
    use anyhow::Context;
    let started = std::time::Instant::now();
    let mut child = Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {}", plugin.display()))?;
    child.stdin.take().expect("piped").write_all(conf)?;
    let out = child.wait_with_output()?;
    let took = started.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "{} {cmd} {container_id}: {}{}",
        plugin.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((took, out.stdout))
}
