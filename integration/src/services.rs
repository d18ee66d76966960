//! Services for the end-to-end tests, given to the node agent the way a
//! cluster gives them: a Service and its EndpointSlices, as manifests in a
//! directory. The agent is the one writer of Services; a test runs it
//! once per change (`sluice-agent --once`) on every node of its VPC.

use crate::bin_dir;
use crate::vpc::Vpc;
use anyhow::{Context, Result, ensure};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;

/// An endpoint's conditions in its EndpointSlice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Ready,
    /// Its pod is shutting down, still serving.
    Terminating,
    /// Failing its readiness probe.
    NotReady,
}

impl Condition {
    fn yaml(self) -> &'static str {
        match self {
            Condition::Ready => "{ready: true}",
            Condition::Terminating => "{ready: false, serving: true, terminating: true}",
            Condition::NotReady => "{ready: false, serving: false, terminating: false}",
        }
    }
}

/// One Service port, as `sluicectl service add` used to take it.
#[derive(Debug, Clone)]
pub struct ServicePort {
    pub vip: IpAddr,
    pub port: u16,
    /// "TCP" or "UDP".
    pub protocol: &'static str,
    pub backends: Vec<(SocketAddr, Condition)>,
    pub maglev: bool,
    /// ClientIP affinity timeout in seconds.
    pub affinity: Option<u32>,
    /// Answer what finds no backend with port unreachable (kube-proxy's
    /// REJECT, the agent's default), else drop it silently.
    pub reject: bool,
}

impl ServicePort {
    /// `vip:port/proto` ("10.96.0.10:80/tcp") with its backends, all
    /// taking new connections.
    pub fn new(frontend: &str, backends: &[SocketAddr]) -> ServicePort {
        let (addr, proto) = frontend.rsplit_once('/').expect("vip:port/proto");
        let sa: SocketAddr = addr.parse().expect("vip:port");
        ServicePort {
            vip: sa.ip(),
            port: sa.port(),
            protocol: if proto.eq_ignore_ascii_case("udp") {
                "UDP"
            } else {
                "TCP"
            },
            backends: backends.iter().map(|b| (*b, Condition::Ready)).collect(),
            maglev: false,
            affinity: None,
            reject: true,
        }
    }

    /// The same, with `b` terminating (keeps its connections, gets no new ones).
    pub fn terminating(mut self, b: SocketAddr) -> ServicePort {
        self.backends.push((b, Condition::Terminating));
        self
    }

    /// The same, with `b` failing its readiness probe.
    pub fn not_ready(mut self, b: SocketAddr) -> ServicePort {
        self.backends.push((b, Condition::NotReady));
        self
    }

    pub fn affinity(mut self, secs: u32) -> ServicePort {
        self.affinity = Some(secs);
        self
    }

    pub fn dropping(mut self) -> ServicePort {
        self.reject = false;
        self
    }

    /// The object names: one Service per frontend.
    fn name(&self) -> String {
        let vip = self.vip.to_string().replace(['.', ':'], "-");
        format!("s-{vip}-{}-{}", self.port, self.protocol.to_lowercase())
    }

    /// The Service and its EndpointSlices (one per target port), as YAML.
    pub fn manifest(&self) -> String {
        let name = self.name();
        let family = if self.vip.is_ipv4() { "IPv4" } else { "IPv6" };
        let mut annotations = Vec::new();
        if self.maglev {
            annotations.push("sluice.io/lb-algorithm: maglev");
        }
        if !self.reject {
            annotations.push("sluice.io/unreachable: drop");
        }
        let affinity = match self.affinity {
            Some(t) => {
                format!("  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {t}}}}}\n")
            }
            None => String::new(),
        };
        let mut out = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: test\n  annotations: {{{}}}\n\
             spec:\n  clusterIP: \"{}\"\n  ipFamilies: [{family}]\n{affinity}  ports:\n  \
             - {{name: p, port: {}, protocol: {}}}\n",
            annotations.join(", "),
            self.vip,
            self.port,
            self.protocol
        );
        let mut by_port: BTreeMap<u16, Vec<(IpAddr, Condition)>> = BTreeMap::new();
        for (b, condition) in &self.backends {
            by_port.entry(b.port()).or_default().push((b.ip(), *condition));
        }
        for (port, endpoints) in by_port {
            out += &format!(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{port}\n  \
                 namespace: test\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: {family}\n\
                 ports: [{{name: p, port: {port}, protocol: {}}}]\nendpoints:\n",
                self.protocol
            );
            for (ip, condition) in endpoints {
                out += &format!("- addresses: [\"{ip}\"]\n  conditions: {}\n", condition.yaml());
            }
        }
        out
    }
}

/// A directory of Service manifests, synced into every node's maps by the
/// agent.
pub struct Services {
    dir: PathBuf,
}

impl Services {
    /// Under the VPC's data directory (removed with it).
    pub fn new(vpc: &Vpc) -> Result<Services> {
        let dir = vpc.data_dir.join("services");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Services { dir })
    }

    /// The manifest directory (what a long-running agent watches).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Add or replace a manifest (`name`.yaml) without syncing anything:
    /// for an agent that watches the directory.
    pub fn write_manifest(&self, name: &str, yaml: &str) -> Result<()> {
        std::fs::write(self.dir.join(format!("{name}.yaml")), yaml).with_context(|| format!("writing {name}.yaml"))
    }

    fn path(&self, s: &ServicePort) -> PathBuf {
        self.dir.join(format!("{}.yaml", s.name()))
    }

    /// Add or replace a Service port, and sync every node.
    pub fn put(&self, vpc: &Vpc, s: &ServicePort) -> Result<()> {
        std::fs::write(self.path(s), s.manifest())?;
        self.sync(vpc)
    }

    /// Add or replace a manifest of any kind (`name`.yaml), and sync every
    /// node.
    pub fn put_manifest(&self, vpc: &Vpc, name: &str, yaml: &str) -> Result<()> {
        std::fs::write(self.dir.join(format!("{name}.yaml")), yaml)?;
        self.sync(vpc)
    }

    /// Remove a Service port (`vip:port/proto`), and sync every node.
    pub fn remove(&self, vpc: &Vpc, frontend: &str) -> Result<()> {
        std::fs::remove_file(self.path(&ServicePort::new(frontend, &[])))?;
        self.sync(vpc)
    }

    /// `sluice-agent --once` on every node, in the node's namespace (as
    /// a DaemonSet's agent with host networking: its own addresses are the
    /// node's).
    pub fn sync(&self, vpc: &Vpc) -> Result<()> {
        for node in 0..vpc.nodes.len() {
            self.sync_node(vpc, node, &[])?;
        }
        Ok(())
    }

    /// `sluice-agent --once` on one node, with `extra` arguments.
    pub fn sync_node(&self, vpc: &Vpc, node: usize, extra: &[&std::ffi::OsStr]) -> Result<()> {
        // nsenter rather than `ip netns exec`, which mounts a sysfs of its
        // own over /sys and so hides the cgroup mount a socket-level
        // attach names.
        let out = Command::new("nsenter")
            .arg(format!("--net={}", vpc.nodes[node].path().display()))
            .arg("--")
            .arg(bin_dir().join("sluice-agent"))
            .arg("--manifests")
            .arg(&self.dir)
            .arg("--bpffs")
            .arg(vpc.bpffs[node].root())
            .args([
                "--node-name",
                &vpc.node_name(node),
                "--once",
                "--no-metrics",
                "--no-flows",
            ])
            .arg("--cni-data-dir")
            .arg(vpc.data_dir.join(format!("n{node}")))
            .arg("--policy-namespaces-file")
            .arg(vpc.data_dir.join(format!("policy-namespaces-n{node}.json")))
            .args(extra)
            .output()
            .context("running sluice-agent (built? cargo build --workspace --bins)")?;
        ensure!(
            out.status.success(),
            "sluice-agent --once on node {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}
