//! A local EC2 for the ENI pool's tests (integration/ec2sim/ec2sim.py):
//! moto's server on the loopback, a proxy in front of it that throttles,
//! runs the subnet dry or holds an action on the test's word, and a
//! watcher that plays the cloud's part on the simulated node: an ENI
//! attached to the instance appears there as an interface with its MAC.
//! Every process is the test's own and is ended by its pid on drop.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ec2sim/ec2sim.py")
}

/// The Python that has moto: `$SLUICE_PYTHON`, the virtualenv
/// scripts/install-deps makes, else the PATH's.
pub fn python() -> String {
    if let Ok(p) = std::env::var("SLUICE_PYTHON") {
        return p;
    }
    let venv = "/opt/sluice-moto/bin/python3";
    if Path::new(venv).exists() {
        return venv.into();
    }
    "python3".into()
}

/// Why the emulator cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    let ok = Command::new(python())
        .args(["-c", "import moto.server, boto3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (!ok).then(|| {
        format!(
            "moto[server] is not importable by {} (scripts/install-deps installs it)",
            python()
        )
    })
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `python3 ec2sim.py`, inside `netns` when given (where the agent under
/// test runs: the emulator must be on its loopback).
fn sim(netns: Option<&Path>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display()))
                .arg("--")
                .arg(python())
                .arg(script());
            c
        }
        None => {
            let mut c = Command::new(python());
            c.arg(script());
            c
        }
    }
}

/// A child process that printed "ready", ended on drop.
struct Helper {
    child: Child,
}

impl Helper {
    fn start(args: &[&str], log: &Path, netns: Option<&Path>) -> Result<Helper> {
        let mut child = sim(netns)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .context("starting ec2sim.py")?;
        let out = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let helper = Helper { child };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.trim() == "ready" => Ok(helper),
            _ => bail!(
                "ec2sim.py {} did not start: {}",
                args.join(" "),
                std::fs::read_to_string(log).unwrap_or_default()
            ),
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto's EC2 on a port of its own, on the loopback of `netns` (the
/// simulated node's) or of the test's namespace.
pub struct Emulator {
    _server: Helper,
    pub endpoint: String,
    netns: Option<PathBuf>,
}

impl Emulator {
    pub fn start(dir: &Path, netns: Option<&Path>) -> Result<Emulator> {
        let port = free_port()?.to_string();
        let server = Helper::start(&["serve", &port], &dir.join("moto.log"), netns)?;
        Ok(Emulator {
            _server: server,
            endpoint: format!("http://127.0.0.1:{port}/"),
            netns: netns.map(Path::to_path_buf),
        })
    }

    fn run(&self, args: &[&str]) -> Result<Value> {
        let out = sim(self.netns.as_deref()).args(args).output()?;
        if !out.status.success() {
            bail!("ec2sim.py {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// A VPC, subnets and one instance of `instance_type`:
    /// `{vpc, subnet, podSubnet, securityGroup, instance}`.
    pub fn setup(&self, instance_type: &str) -> Result<Value> {
        self.run(&["setup", &self.endpoint, instance_type])
    }

    /// Every ENI: `{id, mac, status, instance, deviceIndex, subnet, ips, ipv6, tags}`.
    pub fn enis(&self) -> Result<Vec<Value>> {
        let v = self.run(&["state", &self.endpoint])?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }
}

/// The proxy in front of the emulator, told what to do through a file.
pub struct Proxy {
    _proxy: Helper,
    pub endpoint: String,
    control: PathBuf,
    log: PathBuf,
}

impl Proxy {
    /// In front of `upstream`, in the same namespace as it.
    pub fn start(upstream: &str, dir: &Path, netns: Option<&Path>) -> Result<Proxy> {
        let port = free_port()?.to_string();
        let control = dir.join("proxy-control.json");
        let log = dir.join("proxy-calls.log");
        std::fs::write(&control, "{}")?;
        std::fs::write(&log, "")?;
        let proxy = Helper::start(
            &[
                "proxy",
                &port,
                upstream,
                &control.display().to_string(),
                &log.display().to_string(),
            ],
            &dir.join("proxy.log"),
            netns,
        )?;
        Ok(Proxy {
            _proxy: proxy,
            endpoint: format!("http://127.0.0.1:{port}/"),
            control,
            log,
        })
    }

    /// Replace the proxy's instructions (written whole: read per request).
    pub fn set(&self, v: Value) -> Result<()> {
        let tmp = self.control.with_extension("tmp");
        std::fs::write(&tmp, v.to_string())?;
        std::fs::rename(&tmp, &self.control)?;
        Ok(())
    }

    /// Every request so far: (action, status or "held").
    pub fn calls(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (a, s) = l.split_once(' ')?;
                Some((a.to_string(), s.to_string()))
            })
            .collect()
    }
}

/// The cloud's part on the node: every 150 ms, the instance's ENIs with
/// a device index above 0 get an interface with their MAC in `netns`
/// (named `eni` + index), down, as an OS without ENI hotplug scripts
/// leaves it; interfaces of ENIs detached go away. It
/// asks the emulator from inside `netns`, where the emulator listens.
pub struct Plugger {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Plugger {
    pub fn start(emulator_endpoint: &str, instance: &str, netns: &str) -> Plugger {
        let stop = Arc::new(AtomicBool::new(false));
        let (endpoint, instance, netns, flag) = (
            emulator_endpoint.to_string(),
            instance.to_string(),
            netns.to_string(),
            stop.clone(),
        );
        let thread = std::thread::spawn(move || {
            let ns = std::fs::File::open(format!("/var/run/netns/{netns}")).expect("the node's namespace");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns into the node");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sluice_cloud::Cloud;
                let cfg = sluice_cloud::ec2::Ec2Config {
                    region: Some("us-east-1".into()),
                    endpoint: Some(endpoint),
                    instance_id: Some(instance.clone()),
                    metadata_endpoint: None,
                    ..Default::default()
                };
                let ec2 = sluice_cloud::ec2::Ec2::new_with_credentials(&cfg, test_credentials(), Default::default())
                    .await
                    .expect("an EC2 client for the emulator");
                let mut plugged: std::collections::BTreeMap<String, String> = Default::default();
                // Bounded: a test runs minutes, not hours.
                let until = Instant::now() + Duration::from_secs(1800);
                while !flag.load(Ordering::Relaxed) && Instant::now() < until {
                    match ec2.attached_enis(&instance).await {
                        Err(e) => eprintln!("plugger: {e}"),
                        Ok(enis) => {
                            let now: std::collections::BTreeMap<String, String> = enis
                                .iter()
                                .filter_map(|e| {
                                    let i = e.device_index().filter(|i| *i > 0)?;
                                    Some((e.mac.clone(), format!("eni{i}")))
                                })
                                .collect();
                            for (mac, name) in &now {
                                if !plugged.contains_key(mac) {
                                    // A veth (this kernel has no dummy module), its peer beside it.
                                    let peer = format!("{name}p");
                                    let ok = crate::netns::ip(&[
                                        "-n", &netns, "link", "add", name, "address", mac, "type", "veth", "peer",
                                        "name", &peer,
                                    ])
                                    .and_then(|_| crate::netns::ip(&["-n", &netns, "link", "set", &peer, "up"]));
                                    match ok {
                                        Ok(_) => {
                                            plugged.insert(mac.clone(), name.clone());
                                        }
                                        Err(e) => eprintln!("plugger: {e}"),
                                    }
                                }
                            }
                            let gone: Vec<String> = plugged.keys().filter(|m| !now.contains_key(*m)).cloned().collect();
                            for mac in gone {
                                let name = plugged.remove(&mac).unwrap_or_default();
                                let _ = crate::netns::ip(&["-n", &netns, "link", "del", &name]);
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
            });
        });
        Plugger {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Plugger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What moto takes for credentials (anything signed).
pub fn test_credentials() -> sluice_cloud::ec2::Credentials {
    sluice_cloud::ec2::Credentials {
        access_key_id: "test".into(),
        secret_access_key: "test".into(),
        session_token: None,
        expires: None,
    }
}

/// The environment the agent gets for the emulator.
pub const AGENT_ENV: &[(&str, &str)] = &[("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")];

/// Poll `f` every 100 ms until it is Some, for at most `within`.
pub fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let until = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > until {
            bail!("waited {within:?} for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
