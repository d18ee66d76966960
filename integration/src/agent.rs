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
    /// Its flow-event socket (next to the log).
    pub socket: PathBuf,
}

impl AgentProcess {
    /// Start the agent on `manifests` for the node whose bpffs root is
    /// `bpffs`; its log goes to `log`.
    pub fn start(manifests: &Path, bpffs: &Path, node: &str, log: &Path) -> Result<AgentProcess> {
        AgentProcess::start_with(manifests, bpffs, node, log, &[])
    }

    /// `start`, with `extra` arguments.
    pub fn start_with(manifests: &Path, bpffs: &Path, node: &str, log: &Path, extra: &[&str]) -> Result<AgentProcess> {
        let mut cmd = Command::new(bin_dir().join("sluice-agent"));
        // Ports of its own (the tests run in the root namespace).
        cmd.args(["--metrics", "127.0.0.1:0", "--probes", "127.0.0.1:0"]);
        cmd.args(extra);
        cmd.arg("--manifests").arg(manifests);
        AgentProcess::spawn(cmd, bpffs, node, log)
    }

    /// Start the agent on an API server, the one `kubeconfig` names (the
    /// stand-in of api_server.rs), with `extra` arguments.
    pub fn start_kube(kubeconfig: &Path, bpffs: &Path, node: &str, log: &Path, extra: &[&str]) -> Result<AgentProcess> {
        let mut cmd = Command::new(bin_dir().join("sluice-agent"));
        cmd.args(["--metrics", "127.0.0.1:0", "--probes", "127.0.0.1:0", "--kubernetes"])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("SLUICE_API_SERVER");
        AgentProcess::spawn(cmd, bpffs, node, log)
    }

    /// Start the agent inside namespace `netns` (a simulated node, as a
    /// DaemonSet's agent with host networking runs in the node's), without
    /// metrics, with `extra` arguments.
    pub fn start_in(
        netns: &Path,
        manifests: &Path,
        bpffs: &Path,
        node: &str,
        log: &Path,
        extra: &[&str],
    ) -> Result<AgentProcess> {
        let mut cmd = in_netns(netns);
        cmd.arg("--no-metrics").args(extra).arg("--manifests").arg(manifests);
        AgentProcess::spawn(cmd, bpffs, node, log)
    }

    /// `start_in` with `env` set and metrics served (on a port of its own
    /// in the node's namespace: read them with `Netns::run`).
    pub fn start_in_env(
        netns: &Path,
        manifests: &Path,
        bpffs: &Path,
        node: &str,
        log: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<AgentProcess> {
        let mut cmd = in_netns(netns);
        cmd.args(["--metrics", "127.0.0.1:0", "--probes", "127.0.0.1:0"])
            .args(extra)
            .arg("--manifests")
            .arg(manifests)
            .envs(env.iter().copied());
        AgentProcess::spawn(cmd, bpffs, node, log)
    }

    /// `cmd` (the agent, or what runs it) with the arguments every test
    /// agent takes, its log to `log`.
    fn spawn(mut cmd: Command, bpffs: &Path, node: &str, log: &Path) -> Result<AgentProcess> {
        let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let socket = log.with_extension("sock");
        let child = cmd
            .arg("--bpffs")
            .arg(bpffs)
            .args(["--node-name", node])
            .arg("--flows-socket")
            .arg(&socket)
            // The test's own list (the default is the host's /run/sluice).
            .arg("--policy-namespaces-file")
            .arg(log.with_extension("policy-namespaces.json"))
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
            socket,
        })
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where this agent lists the namespaces that hold a policy (the CNI
    /// config's `policyAtStart.namespacesFile`).
    pub fn policy_namespaces_file(&self) -> PathBuf {
        self.log.with_extension("policy-namespaces.json")
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

/// The agent inside `netns`: nsenter, not `ip netns exec`, which mounts a
/// sysfs of its own.
fn in_netns(netns: &Path) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(bin_dir().join("sluice-agent"));
    cmd
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address on the first line of the agent's log that contains `what`
/// (a "serving ..." line).
pub fn logged_addr(log: &Path, what: &str) -> Option<std::net::SocketAddr> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains(what))?;
    log_field(line, "addr")?.parse().ok()
}

/// `logged_addr`, waited for up to `within` (the agent logs it as it
/// starts).
pub fn wait_logged_addr(log: &Path, what: &str, within: Duration) -> Result<std::net::SocketAddr> {
    let until = Instant::now() + within;
    loop {
        if let Some(a) = logged_addr(log, what) {
            return Ok(a);
        }
        if Instant::now() > until {
            bail!("no {what:?} address in {} within {within:?}", log.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where the agent serves its metrics, from its log.
pub fn metrics_addr(log: &Path) -> Option<std::net::SocketAddr> {
    logged_addr(log, "serving metrics")
}

/// Where the agent serves its probes (`/healthz`, `/readyz`), from its log.
pub fn probes_addr(log: &Path) -> Option<std::net::SocketAddr> {
    logged_addr(log, "serving /healthz")
}

/// GET `path` from `addr`: the status code and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").context("no HTTP header end")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("GET {path}: no status in {head:?}"))?;
    Ok((code, body.to_string()))
}

/// GET /metrics from `addr`: the body.
pub fn scrape(addr: std::net::SocketAddr) -> Result<String> {
    let (code, body) = http_get(addr, "/metrics")?;
    if code != 200 {
        bail!("GET /metrics: {code} {body}");
    }
    Ok(body)
}

/// A sample's value in a Prometheus text body: the line starting with
/// `series ` (name and labels as printed).
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The value of `field=` in a tracing log line.
pub fn log_field<'a>(line: &'a str, field: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {field}="))? + field.len() + 2;
    line[at..].split_whitespace().next().map(|v| v.trim_matches('"'))
}
