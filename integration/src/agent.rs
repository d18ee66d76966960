//! A `sluice-agent` process on a simulated node, started by a test or the
//! demo and killed (by its pid, which we hold) when dropped.

use crate::bin_dir;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct AgentProcess {
    child: Child,
    pub log: PathBuf,
}

impl AgentProcess {
    /// Start the agent on `manifests` for the node whose bpffs root is
    /// `bpffs`; its log goes to `log`.
    pub fn start(manifests: &Path, bpffs: &Path, node: &str, log: &Path) -> Result<AgentProcess> {
        let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(bin_dir().join("sluice-agent"))
            .arg("--manifests")
            .arg(manifests)
            .arg("--bpffs")
            .arg(bpffs)
            .args(["--node-name", node])
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .context("starting sluice-agent (built? cargo build --workspace --bins)")?;
        Ok(AgentProcess {
            child,
            log: log.to_path_buf(),
        })
    }

    /// Wait until the log has `n` "synced" lines; returns them.
    pub fn wait_synced(&mut self, n: usize, within: Duration) -> Result<Vec<String>> {
        let until = Instant::now() + within;
        loop {
            let lines: Vec<String> = std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(" synced"))
                .map(String::from)
                .collect();
            if lines.len() >= n {
                return Ok(lines);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "sluice-agent exited ({status}): {}",
                    std::fs::read_to_string(&self.log)?
                );
            }
            if Instant::now() > until {
                bail!(
                    "sluice-agent logged {} syncs in {within:?}, expected {n}: {}",
                    lines.len(),
                    std::fs::read_to_string(&self.log)?
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, as a crash or `kill -9` would.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `field=` in a tracing log line.
pub fn log_field<'a>(line: &'a str, field: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {field}="))? + field.len() + 2;
    line[at..].split_whitespace().next().map(|v| v.trim_matches('"'))
}
