//! containerd's CRI plugin as the kubelet drives it: a containerd of the
//! test's own (root, state, socket, CNI `conf_dir` and `bin_dir` under one
//! directory, never the machine's), run in a simulated node's network
//! namespace, and a CRI client over its gRPC socket (the CRI protos of the
//! `k8s-cri` crate). Images are built offline (`scripts/image --busybox`)
//! and imported; nothing is pulled.
//!
//! Dropping a [`Containerd`] stops and removes every sandbox it still has
//! through CRI, then ends the daemon and the shims it started (by pid,
//! found by the socket address on their command line), unmounts what is
//! left under its directory and removes it.

use anyhow::{Context, Result, bail, ensure};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{self as cri, PodSandboxConfig};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

/// The image every pod uses, as sandbox ("pause") and as container.
pub const IMAGE: &str = "localhost/sluice-test/busybox:1";

/// Why containerd's CRI cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    let tools = [
        "containerd",
        "ctr",
        "containerd-shim-runc-v2",
        "runc",
        "podman",
        "nsenter",
    ];
    if let Some(why) = crate::missing_tool(&tools, "containerd podman runc") {
        return Some(why);
    }
    if !Path::new("/bin/busybox").is_file() {
        return Some("busybox-static is not installed (the test pods' image)".into());
    }
    None
}

/// Build the test pods' image with `scripts/image --busybox` (podman state
/// under `work`) and save it as an OCI archive; returns the archive.
pub fn build_image(work: &Path) -> Result<PathBuf> {
    let podman = crate::podman::Podman::new(&work.join("podman"), "")?;
    let archive = work.join("busybox.tar");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/image");
    let mut c = Command::new(script);
    c.args(["--busybox", "--tag", IMAGE, "--save"]).arg(&archive);
    podman.env(&mut c);
    let out = c.output().context("running scripts/image --busybox")?;
    ensure!(
        out.status.success(),
        "scripts/image --busybox: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The image lives on in the archive; podman's copy is not needed.
    let _ = podman.command(None).args(["rmi", "--force", IMAGE]).output();
    Ok(archive)
}

pub struct Containerd {
    pub dir: PathBuf,
    /// The CNI configuration directory containerd reads (`conf_dir`).
    pub conf_dir: PathBuf,
    /// The CNI binaries it runs (`bin_dir`, also its `CNI_PATH`).
    pub bin_dir: PathBuf,
    pub socket: PathBuf,
    node: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    /// A containerd under `dir` in the network namespace `node` (so the
    /// CNI plugins it runs find the node's interfaces), with `archive`
    /// imported.
    pub fn start(dir: &Path, node: &Path, archive: &Path) -> Result<Containerd> {
        let conf_dir = dir.join("net.d");
        let bin_dir = dir.join("bin");
        for d in [&conf_dir, &bin_dir, &dir.join("root"), &dir.join("state")] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let socket = dir.join("state/containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  disable_apparmor = true
  # The sandbox asks for an oom_score_adj of -998, below what this
  # machine's root may set (it lacks CAP_SYS_RESOURCE); containerd then
  # keeps it at its own.
  restrict_oom_score_adj = true
  # The sandboxes' network namespaces under the state directory, not the
  # machine's /run/netns: what a crash leaves is removed with it.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            socket = socket.display(),
            bin = bin_dir.display(),
            conf = conf_dir.display(),
        );
        std::fs::write(dir.join("config.toml"), config)?;
        let mut c = Containerd {
            dir: dir.to_path_buf(),
            conf_dir,
            bin_dir,
            socket,
            node: node.to_path_buf(),
            child: None,
        };
        c.spawn()?;
        let out = Command::new("timeout")
            .args(["60", "ctr", "--address"])
            .arg(&c.socket)
            .args(["-n", "k8s.io", "images", "import", "--all-platforms"])
            .arg(archive)
            .output()?;
        ensure!(
            out.status.success(),
            "ctr images import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(c)
    }

    /// Start the daemon and wait until it answers CRI's Version.
    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))?;
        // nsenter execs containerd: the pid is containerd's.
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.node.display()))
            .arg("--")
            .arg("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait()? {
                bail!("containerd exited ({st}): {}", self.log());
            }
            if self.socket.exists() && block_on(async { self.connect().await?.version().await }).is_ok() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "containerd did not answer in 30s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the daemon (SIGTERM, as systemd stops it), sandboxes left
    /// running under their shims; then start it again on the same state.
    pub fn restart(&mut self) -> Result<()> {
        self.stop_daemon();
        self.spawn()
    }

    fn stop_daemon(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// The last errors and warnings of containerd's log (for a failure's
    /// message).
    pub fn log_errors(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("level=error") || l.contains("level=warning"))
            .collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    pub async fn connect(&self) -> Result<Cri> {
        let path = self.socket.clone();
        let channel = Endpoint::try_from("http://[::]:50051")?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .with_context(|| format!("connecting to {}", self.socket.display()))?;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// Wait until the CRI plugin reports its network ready (it found a
    /// CNI configuration in `conf_dir`).
    pub fn wait_network_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = block_on(async { self.connect().await?.network_ready().await })?;
            if ready {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the CRI network is not ready: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Shims this containerd started: processes whose command line names
    /// its socket.
    fn shims(&self) -> Vec<i32> {
        let needle = self.socket.display().to_string();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd);
            if cmd.contains("containerd-shim") && cmd.split('\0').any(|a| a == needle) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = block_on(async {
                let mut cri = self.connect().await?;
                for id in cri.sandboxes().await? {
                    let _ = cri.stop_pod(&id).await;
                    let _ = cri.remove_pod(&id).await;
                }
                anyhow::Ok(())
            });
        }
        self.stop_daemon();
        // Shims of removed sandboxes exit by themselves, a moment later.
        let deadline = Instant::now() + Duration::from_secs(3);
        while !self.shims().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in self.shims() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        // What containerd mounted for its sandboxes (their /dev/shm) and
        // did not take back.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = self.dir.display().to_string();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Run a future to completion on a runtime of its own (the tests are
/// synchronous; several may run at once).
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(f)
}

/// A pod as the kubelet describes it to the runtime.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// (protocol "TCP"/"UDP", containerPort, hostPort).
    pub ports: Vec<(&'static str, u16, u16)>,
}

impl PodSpec {
    pub fn new(namespace: &str, name: &str) -> PodSpec {
        PodSpec {
            name: name.into(),
            namespace: namespace.into(),
            uid: format!("uid-{namespace}-{name}"),
            ports: Vec::new(),
        }
    }

    /// The sandbox config the kubelet would send: metadata, hostname, DNS,
    /// port mappings, a log directory.
    pub fn config(&self, log_dir: &Path) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: 0,
            }),
            hostname: self.name.clone(),
            log_directory: log_dir.join(&self.uid).display().to_string(),
            dns_config: Some(cri::DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec![
                    format!("{}.svc.cluster.local", self.namespace),
                    "svc.cluster.local".into(),
                ],
                options: vec!["ndots:5".into()],
            }),
            port_mappings: self
                .ports
                .iter()
                .map(|&(proto, container, host)| cri::PortMapping {
                    protocol: if proto == "UDP" {
                        cri::Protocol::Udp as i32
                    } else {
                        cri::Protocol::Tcp as i32
                    },
                    container_port: i32::from(container),
                    host_port: i32::from(host),
                    host_ip: String::new(),
                })
                .collect(),
            labels: [("app".to_string(), self.name.clone())].into(),
            linux: Some(cri::LinuxPodSandboxConfig::default()),
            ..Default::default()
        }
    }
}

/// A CRI client (runtime and image services).
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

impl Cri {
    pub async fn version(&mut self) -> Result<String> {
        let v = self
            .runtime
            .version(cri::VersionRequest { version: "v1".into() })
            .await?
            .into_inner();
        Ok(format!("{} {}", v.runtime_name, v.runtime_version))
    }

    pub async fn network_ready(&mut self) -> Result<bool> {
        let st = self
            .runtime
            .status(cri::StatusRequest { verbose: false })
            .await?
            .into_inner();
        Ok(st
            .status
            .into_iter()
            .flat_map(|s| s.conditions)
            .any(|c| c.r#type == "NetworkReady" && c.status))
    }

    /// RunPodSandbox; the sandbox's id.
    pub async fn run_pod(&mut self, config: &PodSandboxConfig) -> Result<String, tonic::Status> {
        let r = self
            .runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await?;
        Ok(r.into_inner().pod_sandbox_id)
    }

    /// The sandbox's state ("SANDBOX_READY"/"SANDBOX_NOTREADY") and IP.
    pub async fn pod_status(&mut self, id: &str) -> Result<(String, String)> {
        let st = self
            .runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .context("no status")?;
        let state = cri::PodSandboxState::try_from(st.state)
            .map(|s| s.as_str_name().to_string())
            .unwrap_or_default();
        let ip = st.network.map(|n| n.ip).unwrap_or_default();
        Ok((state, ip))
    }

    pub async fn stop_pod(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await?;
        Ok(())
    }

    pub async fn remove_pod(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await?;
        Ok(())
    }

    /// Every sandbox's id.
    pub async fn sandboxes(&mut self) -> Result<Vec<String>> {
        let r = self
            .runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await?
            .into_inner();
        Ok(r.items.into_iter().map(|s| s.id).collect())
    }

    /// Create and start a container running `command` in the sandbox.
    pub async fn start_container(
        &mut self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        name: &str,
        command: &[&str],
    ) -> Result<String> {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            ..Default::default()
        };
        let id = self
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(config),
                sandbox_config: Some(pod_config.clone()),
            })
            .await
            .with_context(|| format!("CreateContainer {name}"))?
            .into_inner()
            .container_id;
        self.runtime
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .with_context(|| format!("StartContainer {name}"))?;
        Ok(id)
    }

    /// ExecSync `command` in a container: exit code and stdout.
    pub async fn exec(&mut self, container: &str, command: &[&str], timeout_s: i64) -> Result<(i32, String)> {
        let r = self
            .runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: container.into(),
                cmd: command.iter().map(|s| s.to_string()).collect(),
                timeout: timeout_s,
            })
            .await
            .with_context(|| format!("ExecSync {command:?}"))?
            .into_inner();
        Ok((r.exit_code, String::from_utf8_lossy(&r.stdout).into_owned()))
    }
}

/// Which network containerd's CRI runs pods on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Only the reference plugins (macvlan + host-local): the baseline.
    Reference,
    /// sluice chained behind them by `sluice-install`.
    Chained,
    /// sluice's own conflist (it makes the macvlan), by `sluice-install`.
    Main,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Reference => "reference plugins (macvlan + host-local)",
            Role::Chained => "sluice chained behind them",
            Role::Main => "sluice main role",
        }
    }
}

/// The sluice entries ask for the runtime's port mappings (containerd
/// passes `runtimeConfig.portMappings` only to a plugin that declares it).
fn with_port_mappings(mut plugin: serde_json::Value) -> serde_json::Value {
    plugin["capabilities"] = serde_json::json!({"portMappings": true});
    plugin
}

/// Put node 0's network for `role` where `ctr` reads it: the node's own
/// (reference) conflist and plugins, then `sluice-install` as the
/// DaemonSet's init container runs it, with containerd's own `conf_dir`
/// and `bin_dir`. Waits until the CRI plugin reports the network ready.
pub fn install_network(vpc: &crate::vpc::Vpc, ctr: &Containerd, role: Role) -> Result<()> {
    install_network_with(vpc, ctr, role, &|_| {})
}

/// `install_network`, with `tweak` applied to sluice's plugin entry.
pub fn install_network_with(
    vpc: &crate::vpc::Vpc,
    ctr: &Containerd,
    role: Role,
    tweak: &dyn Fn(&mut serde_json::Value),
) -> Result<()> {
    // containerd runs `loopback` for every sandbox besides the network.
    for p in ["macvlan", "host-local", "loopback"] {
        std::fs::copy(Path::new("/usr/lib/cni").join(p), ctr.bin_dir.join(p))
            .with_context(|| format!("copying the reference {p} plugin"))?;
    }
    let full = vpc.chained_conflist(0, "1.0.0");
    let mut node_own = full.clone();
    let mut sluice = node_own["plugins"]
        .as_array_mut()
        .context("plugins")?
        .pop()
        .context("sluice entry")?;
    tweak(&mut sluice);
    let mut install = Command::new(crate::bin_dir().join("sluice-install"));
    install
        .arg("--from")
        .arg(crate::cni_bin_dir())
        .arg("--cni-bin-dir")
        .arg(&ctr.bin_dir)
        .arg("--cni-conf-dir")
        .arg(&ctr.conf_dir);
    match role {
        Role::Reference => {
            std::fs::write(ctr.conf_dir.join("10-vpc.conflist"), node_own.to_string())?;
        }
        Role::Chained => {
            std::fs::write(ctr.conf_dir.join("10-vpc.conflist"), node_own.to_string())?;
            install.arg("--plugin").arg(with_port_mappings(sluice).to_string());
        }
        Role::Main => {
            let mut main = vpc.main_conf(0, "1.0.0");
            tweak(&mut main);
            let own = serde_json::json!({
                "cniVersion": "1.0.0",
                "name": format!("{}-net", vpc.prefix),
                "plugins": [with_port_mappings(main)],
            });
            let file = ctr.dir.join("sluice-main.conflist");
            std::fs::write(&file, own.to_string())?;
            install.arg("--conflist").arg(&file);
        }
    }
    if role != Role::Reference {
        let out = install.output().context("running sluice-install")?;
        ensure!(
            out.status.success(),
            "sluice-install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ctr.wait_network_ready()
}

/// The plugin's endpoint records on node 0 of `vpc` (every network).
pub fn endpoint_records(vpc: &crate::vpc::Vpc) -> Vec<serde_json::Value> {
    let dir = vpc.data_dir.join("n0/endpoints");
    let mut out = Vec::new();
    for net in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(net.path()).into_iter().flatten().flatten() {
            if f.path().extension().is_some_and(|e| e == "json")
                && let Some(v) = std::fs::read(f.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
            {
                out.push(v);
            }
        }
    }
    out
}
