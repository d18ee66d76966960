//! The agent's event loop: a source's changes become syncs; between them,
//! flow events are read every `FLOW_POLL` and conntrack and vanished pods
//! are collected on an adaptive interval.

use crate::agent::{Agent, AgentError, Report};
use crate::endpoint_gc;
use crate::flows::{FlowReader, FlowServer};
use crate::gc::Interval;
use crate::metrics::{self, AgentMetrics};
use crate::node_events::{Dedup, Poster};
use crate::services::NodeView;
use crate::source::kube::{self, KubeStore};
use crate::source::manifests::ManifestDir;
use anyhow::{Context, Result};
use clap::Parser;
use notify::{RecursiveMode, Watcher};
use sluice_tc_datapath::config::DEFAULT_BPFFS;
use sluice_tc_datapath::loader::versioned_dir;
use sluice_tc_datapath::maps::Maps;
use sluice_tc_datapath::maps::observe::DEFAULT_FLOWS_SOCKET;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Which pods get TCX links (`--tcx-links`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TcxLinks {
    /// Every pod.
    All,
    /// The pods that could take their clsact filters off.
    NetAdmin,
}

/// `sluice-agent`'s command line.
#[derive(Parser)]
#[command(name = "sluice-agent", version, about)]
pub struct Options {
    /// Directory of Kubernetes manifests (YAML or JSON, several documents
    /// per file): Services, EndpointSlices, NetworkPolicies, Pods,
    /// Namespaces, Nodes. Other kinds are skipped.
    #[arg(long, required_unless_present = "kubernetes", conflicts_with = "kubernetes")]
    pub manifests: Option<PathBuf>,
    /// Read the cluster from the Kubernetes API server instead: in-cluster
    /// configuration, else $KUBECONFIG or ~/.kube/config.
    #[arg(long)]
    pub kubernetes: bool,
    /// The API server's own address (`https://10.0.0.10:6443`), instead of
    /// the `kubernetes` Service's ClusterIP the in-cluster configuration
    /// names: with no kube-proxy, nothing translates that ClusterIP for a
    /// host-network agent before sluice's own datapath is up. The service
    /// account's token and CA are still used. Also read from
    /// $SLUICE_API_SERVER.
    #[arg(long)]
    pub api_server: Option<String>,
    /// The bpffs root the CNI plugin pins the datapath under (its
    /// `datapath.bpffs` setting).
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// The node's sluice network configuration (the installer's
    /// `00-sluice.conflist`): where no pod's ADD has loaded the node's
    /// programs yet, the agent loads them itself with that file's datapath
    /// settings, so that the node serves NodePorts and its own sockets
    /// before its first pod. Not given: the agent waits for that ADD.
    #[arg(long)]
    pub cni_conf: Option<PathBuf>,
    /// This node's name, as EndpointSlices and Node objects give it
    /// (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// This node's own addresses (they may always reach its pods); the
    /// Node object's are added.
    #[arg(long)]
    pub node_ip: Vec<IpAddr>,
    /// Sync once and exit.
    #[arg(long)]
    pub once: bool,
    /// Socket-level load balancing for the node's own sockets (hostNetwork
    /// pods, the kubelet, node daemons): the cgroup hooks are attached to
    /// this cgroup v2 directory, the node's root cgroup in production (the
    /// DaemonSet mounts the host's). Off when not given.
    #[arg(long)]
    pub socket_lb_cgroup: Option<PathBuf>,
    /// Serve every network namespace's sockets at the socket level, pods'
    /// included (default: the agent's own, the node's; pods go through
    /// their interface's tc programs).
    #[arg(long)]
    pub socket_lb_all_namespaces: bool,
    /// An interface traffic from outside arrives on (an ENI parent, the
    /// node's main interface), repeatable; `auto`: those of the default
    /// routes. NodePorts, load-balancer IPs, external IPs and hostPorts
    /// are served there, by the uplink programs. None given: traffic from
    /// outside is not served.
    #[arg(long = "uplink")]
    pub uplinks: Vec<String>,
    /// Which pods attached with `datapath.attach: auto` are moved from
    /// clsact filters onto pinned TCX links: `all` (a packet costs less on
    /// a link), or `net-admin`, only those that could take their filters
    /// off (a container with `NET_ADMIN` or privileged, as the Pod object
    /// says; a pod with no Pod object known is moved too), for nodes where
    /// pods' DEL matters more: links cost it two RCU grace periods.
    #[arg(long, value_enum, default_value_t = TcxLinks::All)]
    pub tcx_links: TcxLinks,
    /// Serve no health check node ports (`externalTrafficPolicy: Local`).
    #[arg(long)]
    pub no_health_checks: bool,
    /// Where to serve Prometheus metrics (`/metrics`); port 0 picks one.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics: SocketAddr,
    /// Serve no metrics.
    #[arg(long)]
    pub no_metrics: bool,
    /// Where to serve the kubelet's probes: `/healthz` (the agent's loop is
    /// turning) and `/readyz` (programs loaded, first sync written).
    #[arg(long, default_value = "127.0.0.1:9465")]
    pub probes: SocketAddr,
    /// Serve no probes.
    #[arg(long)]
    pub no_probes: bool,
    /// Serve the node's service-proxy health where kube-proxy does
    /// (`[::]:10256` in the DaemonSet): `/healthz` for cloud load
    /// balancers choosing nodes, and `/livez`. Off when not given. A port
    /// another process holds (kube-proxy, while it is replaced) is tried
    /// again at each sync.
    #[arg(long)]
    pub proxy_health: Option<SocketAddr>,
    /// Serve kube-proxy's status port (its `--metrics-bind-address`,
    /// `127.0.0.1:10249` in the DaemonSet): `/proxyMode` says `sluice`, for
    /// tools (and the upstream e2e "should check kube-proxy urls") asking
    /// which proxy the node runs; `/healthz` as the probes'. Off when not
    /// given; the metrics stay on `--metrics`.
    #[arg(long)]
    pub proxy_status: Option<SocketAddr>,
    /// How long a change of Services may wait to be written before the
    /// proxy health says unhealthy (kube-proxy: twice its sync period).
    #[arg(long, default_value_t = crate::proxy_health::DEFAULT_TIMEOUT.as_secs())]
    pub proxy_health_timeout_secs: u64,
    /// The Unix socket `sluicectl observe` reads flow events from.
    #[arg(long, default_value = DEFAULT_FLOWS_SOCKET)]
    pub flows_socket: PathBuf,
    /// Read no flow events (another reader has the ring).
    #[arg(long)]
    pub no_flows: bool,
    /// Label keys never part of a pod's identity, comma-separated. Not
    /// needed for labels no selector reads (identities keep only the keys
    /// some selector in force uses); a selector on an excluded key reads it
    /// as absent, and the agent warns about it.
    #[arg(long, value_delimiter = ',')]
    pub identity_exclude_labels: Vec<String>,
    /// Where to list the namespaces that hold a NetworkPolicy, for the CNI
    /// plugin: it holds a pod of those at ADD (only its node reachable)
    /// until its policy is written. The CNI config's
    /// `policyAtStart.namespacesFile`.
    #[arg(long, default_value = "/run/sluice/policy-namespaces.json")]
    pub policy_namespaces_file: PathBuf,
    /// The CNI plugin's `dataDir` (its endpoint records name each pod's
    /// netns; pods whose netns is gone lose their datapath state).
    #[arg(long, default_value = endpoint_gc::CNI_DATA_DIR)]
    pub cni_data_dir: PathBuf,
    /// Keep the node's ENIs and their addresses from the cloud as the
    /// pool's configuration file (JSON) says, published to the node file
    /// the CNI plugin's `eniPool` reads. Targets in the file are read
    /// again while running. See docs/eni-cloud.md.
    #[arg(long)]
    pub eni_pool: Option<PathBuf>,
}

/// How long to wait for the datapath before each new attempt.
const WAIT_FOR_DATAPATH: Duration = Duration::from_millis(500);
/// How often the flow-event ring is read (the datapath does not wake us).
const FLOW_POLL: Duration = Duration::from_millis(100);
/// Events that arrive this close together are one change (an editor's
/// save is several).
const SETTLE: Duration = Duration::from_millis(5);
/// Between two pods moved onto TCX links: the loop's events go first.
const PROMOTE_GAP: Duration = Duration::from_millis(2);
/// A sync that left failures is tried again after this, doubling to
/// `RETRY_MAX` while it keeps failing.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// The API-server client: in-cluster or kubeconfig, with the server's
/// address replaced by `api_server` when given.
async fn api_client(api_server: Option<&str>) -> Result<::kube::Client> {
    let mut config = ::kube::Config::infer()
        .await
        .context("no in-cluster configuration and no kubeconfig")?;
    let env = std::env::var("SLUICE_API_SERVER").ok();
    if let Some(url) = api_server.or(env.as_deref()).filter(|u| !u.is_empty()) {
        config.cluster_url = api_server_url(url)?;
    }
    ::kube::Client::try_from(config).context("building the API-server client")
}

/// `--api-server`: an https URL with a host (a port is optional).
pub fn api_server_url(url: &str) -> Result<http::Uri> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("--api-server {url:?} is not a URL"))?;
    anyhow::ensure!(
        matches!(uri.scheme_str(), Some("https") | Some("http")) && uri.host().is_some(),
        "--api-server {url:?}: give https://HOST[:PORT]"
    );
    Ok(uri)
}

/// Attach the socket hooks to `cgroup`, with the settings the node's
/// programs were loaded with, for the agent's own namespace's sockets
/// unless every namespace is asked for.
fn attach_socket_lb(opts: &Options, cgroup: &std::path::Path) -> Result<()> {
    let versioned = versioned_dir(&opts.bpffs);
    let maps = Maps::open_pinned(&versioned).context("opening the maps for socket load balancing")?;
    let mut cfg = maps
        .observe()
        .loaded_config(&versioned)
        .context("the settings the node's programs were loaded with")?;
    cfg.bpffs = opts.bpffs.clone();
    let netns = if opts.socket_lb_all_namespaces {
        0
    } else {
        sluice_tc_datapath::netns_cookie::current().context("reading this network namespace's cookie")?
    };
    let cgroup = &cgroup2_dir(cgroup);
    let n = sluice_tc_datapath::attach::sock::attach(&cfg, cgroup, netns)
        .with_context(|| format!("attaching socket load balancing to {}", cgroup.display()))?;
    info!(cgroup = %cgroup.display(), hooks = n, all_namespaces = opts.socket_lb_all_namespaces, "socket load balancing on");
    Ok(())
}

/// `dir`, or its `unified` child where `dir` is a hybrid host's cgroup v1
/// tmpfs (the cgroup v2 hierarchy is mounted there).
fn cgroup2_dir(dir: &std::path::Path) -> PathBuf {
    let is_v2 = |p: &std::path::Path| {
        nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
    };
    let unified = dir.join("unified");
    if !is_v2(dir) && is_v2(&unified) {
        unified
    } else {
        dir.to_path_buf()
    }
}

/// What wakes the loop: a file event, the API-server store changed, or
/// the CNI plugin's endpoint records changed (a pod started or went).
enum Input {
    File(notify::Result<notify::Event>),
    Kube,
    Records,
}

/// Where the objects come from.
enum Source {
    /// The directory, and its watcher (alive as long as it is held).
    Dir(Box<ManifestDir>, #[allow(dead_code)] Box<notify::RecommendedWatcher>),
    /// The store, and the poster of the node's events.
    Kube(Arc<Mutex<KubeStore>>, Poster),
}

impl Source {
    /// Start watching, then read: no change falls in between.
    fn start(opts: &Options, node: &str, tx: mpsc::Sender<Input>) -> Result<Source> {
        let Some(path) = &opts.manifests else {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let client = rt
                .block_on(api_client(opts.api_server.as_deref()))
                .context("connecting to the Kubernetes API server")?;
            // Its task runs on this runtime, driven by the watch below.
            let poster = rt.block_on(async { Poster::spawn(client.clone(), node.to_string()) });
            let store = Arc::new(Mutex::new(KubeStore::default()));
            let s = store.clone();
            std::thread::Builder::new().name("kube".into()).spawn(move || {
                rt.block_on(kube::watch(client, s, move || {
                    let _ = tx.send(Input::Kube);
                }))
            })?;
            return Ok(Source::Kube(store, poster));
        };
        let mut dir = ManifestDir::new(path);
        let mut watcher = notify::recommended_watcher(move |ev| {
            let _ = tx.send(Input::File(ev));
        })
        .context("starting the file watcher")?;
        watcher
            .watch(path, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", path.display()))?;
        for e in dir
            .reload_all()
            .with_context(|| format!("reading {}", path.display()))?
        {
            warn!(error = %e, "manifest skipped");
        }
        Ok(Source::Dir(Box::new(dir), Box::new(watcher)))
    }

    fn describe(&self) -> String {
        match self {
            Source::Dir(d, _) => format!("manifests in {}", d.dir().display()),
            Source::Kube(..) => "the Kubernetes API server".into(),
        }
    }
}

/// What a batch of inputs asks for.
#[derive(Default)]
struct Changes {
    paths: BTreeSet<PathBuf>,
    kube: bool,
    records: bool,
}

impl Changes {
    /// Only what changes a file's content or presence: reading the files
    /// ourselves makes access events, which must not trigger a reload.
    fn note(&mut self, input: Input) {
        match input {
            Input::File(Ok(ev)) if ev.kind.is_create() || ev.kind.is_modify() || ev.kind.is_remove() => {
                self.paths.extend(ev.paths)
            }
            Input::File(Ok(_)) => {}
            Input::File(Err(e)) => warn!(error = %e, "file watcher"),
            Input::Kube => self.kube = true,
            Input::Records => self.records = true,
        }
    }
}

struct Daemon {
    opts: Options,
    agent: Agent,
    source: Source,
    rx: mpsc::Receiver<Input>,
    metrics: Option<AgentMetrics>,
    flows: Option<(FlowReader, FlowServer)>,
    gc: Interval,
    gone_pods: BTreeSet<PathBuf>,
    /// Pod names from the CNI plugin's records (flows of pods without a
    /// Pod object).
    record_names: endpoint_gc::RecordNames,
    /// The first sync is done.
    started: bool,
    /// When to sync again because the last one left failures, and the
    /// wait after that.
    retry: Option<(Instant, Duration)>,
    /// What the node's events said already.
    events: Dedup,
    uplinks: Vec<crate::uplinks::Uplink>,
    health: Option<crate::health_check::HealthServers>,
    probes: Arc<crate::probes::Probes>,
    proxy_health: Arc<crate::proxy_health::ProxyHealth>,
    /// The proxy health is wanted and not served yet (its port was taken).
    proxy_health_unbound: bool,
    /// The CNI records' watcher (alive as long as it is held).
    _records: Option<notify::RecommendedWatcher>,
    /// What the policy namespaces file says, as last written.
    policy_namespaces: Option<BTreeSet<String>>,
    /// When to move the next pod from filters onto TCX links (promote.rs):
    /// `QUIET` after the last record change.
    promote_due: Option<Instant>,
    /// Pods (attachment keys) whose move failed: tried again after the
    /// next collection.
    promote_failed: BTreeSet<String>,
    /// The Pods' generation `pods_changed` last looked at (store, generation).
    pods_seen: Option<(u64, u64)>,
    /// The kernel has no TCX: pods stay on filters.
    tcx_unsupported: bool,
    /// The reaper's lock (reap.rs), while this agent holds it.
    reaper: Option<std::fs::File>,
    /// Records whose reap failed: tried again after the next collection.
    reap_failed: BTreeSet<std::path::PathBuf>,
}

/// Watch the CNI plugin's endpoint records: a pod's ADD or DEL wakes the
/// loop at once (its policy, or its hold released, follows in
/// milliseconds). None when the directory is not there (no pod has been
/// made on this node: the collection pass reads it later).
fn watch_records(cni_data_dir: &std::path::Path, tx: mpsc::Sender<Input>) -> Option<notify::RecommendedWatcher> {
    let endpoints = cni_data_dir.join("endpoints");
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        let ours = ev
            .paths
            .iter()
            .any(|p| p.starts_with(&endpoints) && p.extension().is_some_and(|e| e == "json"));
        if ours && (ev.kind.is_create() || ev.kind.is_modify() || ev.kind.is_remove()) {
            let _ = tx.send(Input::Records);
        }
    })
    .ok()?;
    match w.watch(cni_data_dir, RecursiveMode::Recursive) {
        Ok(()) => Some(w),
        Err(e) => {
            info!(dir = %cni_data_dir.display(), error = %e, "not watching the CNI records (pods' holds wait for a sync)");
            None
        }
    }
}

/// Run the agent until its source stops (or after one sync with `--once`).
pub fn run(opts: Options) -> Result<()> {
    let node = NodeView {
        name: match &opts.node_name {
            Some(n) => n.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .context("reading the host name (or give --node-name)")?
                .trim()
                .to_string(),
        },
        addresses: opts.node_ip.clone(),
    };
    // Alive from the start: waiting for the datapath or the first list
    // is not being stuck.
    let probes = crate::probes::Probes::new();
    if !opts.once && !opts.no_probes {
        let addr = crate::probes::serve(opts.probes, probes.clone())
            .with_context(|| format!("serving the probes on {}", opts.probes))?;
        info!(%addr, "serving /healthz and /readyz");
    }
    // Pending from the start: the first list and sync count as a change.
    // Served before the wait for the datapath, which it reports on.
    let proxy_health = crate::proxy_health::ProxyHealth::new(Duration::from_secs(opts.proxy_health_timeout_secs));
    let proxy_health_unbound = !opts.once && !serve_proxy_health(&opts, &proxy_health, false);
    if let (Some(addr), false) = (opts.proxy_status, opts.once) {
        let p = probes.clone();
        match crate::http::serve(
            addr,
            "proxy-status",
            move |path| crate::proxy_health::status_answer(path, &p),
            crate::http::Limits::default(),
        ) {
            Ok(addr) => info!(%addr, "serving the proxy status at /proxyMode"),
            // kube-proxy's port while it is being replaced: only a name.
            Err(e) => warn!(%addr, error = %e, "cannot serve the proxy status"),
        }
    }
    // Served from the start: the ENI pool runs (and has figures) before the
    // first pod loads the datapath.
    let pool_metrics = opts
        .eni_pool
        .as_ref()
        .map(|_| sluice_cloud::metrics::PoolMetrics::default());
    let metrics = if opts.once || opts.no_metrics {
        None
    } else {
        let (registry, m) = metrics::registry(&opts.bpffs, pool_metrics.as_ref());
        let addr =
            metrics::serve(opts.metrics, registry).with_context(|| format!("serving metrics on {}", opts.metrics))?;
        info!(%addr, "serving metrics at /metrics");
        Some(m)
    };
    // Before the datapath: the first pod's ADD needs an address from it.
    if let (Some(path), false) = (&opts.eni_pool, opts.once) {
        crate::eni_pool::start(path.clone(), pool_metrics.clone().unwrap_or_default())
            .with_context(|| format!("starting the ENI pool of {}", path.display()))?;
    }
    let (tx, rx) = mpsc::channel::<Input>();
    let records = if opts.once {
        None
    } else {
        watch_records(&opts.cni_data_dir, tx.clone())
    };
    // Held for the agent's life: a DEL of a pod on TCX links leaves its
    // interface for `reap_next` while it is (reap.rs).
    let reaper = if opts.once {
        None
    } else {
        match sluice_tc_datapath::attach::retire::hold_reaper(&opts.cni_data_dir) {
            Ok(f) => Some(f),
            Err(e) => {
                warn!(error = %e, "not reaping pod interfaces: DELs delete their own");
                None
            }
        }
    };
    let source = Source::start(&opts, &node.name, tx)?;
    let mut loader = DatapathLoader::default();
    // Before the maps are opened: a resize makes new ones.
    if let Some(conf) = &opts.cni_conf {
        crate::tables::resize(conf, &opts.bpffs, &opts.cni_data_dir);
    }
    let agent = loop {
        match Agent::open(&opts.bpffs, node.clone(), opts.node_ip.clone()) {
            Ok(a) => break a,
            Err(AgentError::NotLoaded(_)) if loader.load(&opts) => {}
            Err(AgentError::NotLoaded(d)) if !opts.once => {
                info!(dir = %d, "waiting for the datapath");
                probes.beat();
                std::thread::sleep(WAIT_FOR_DATAPATH);
            }
            Err(e) => return Err(e).context("opening the datapath maps"),
        }
    };
    let mut agent = agent;
    agent.exclude_identity_labels(opts.identity_exclude_labels.clone());
    probes.set_loaded();
    info!(node = %node.name, source = %source.describe(), "agent started");
    if let Some(cgroup) = &opts.socket_lb_cgroup {
        attach_socket_lb(&opts, cgroup)?;
    }
    let uplinks = if opts.uplinks.is_empty() {
        Vec::new()
    } else {
        crate::uplinks::attach_all(&opts.bpffs, &opts.uplinks, &[]).context("attaching the uplink programs")?
    };
    let health = if opts.once || opts.no_health_checks {
        None
    } else {
        Some(crate::health_check::HealthServers::start().context("starting the health check servers")?)
    };
    let mut d = Daemon {
        opts,
        agent,
        source,
        rx,
        metrics,
        flows: None,
        gc: Interval::default(),
        gone_pods: BTreeSet::new(),
        record_names: endpoint_gc::RecordNames::default(),
        started: false,
        retry: None,
        events: Dedup::default(),
        uplinks,
        health,
        probes,
        proxy_health,
        proxy_health_unbound,
        _records: records,
        policy_namespaces: None,
        promote_due: Some(Instant::now() + crate::promote::QUIET),
        promote_failed: BTreeSet::new(),
        pods_seen: None,
        tcx_unsupported: false,
        reaper,
        reap_failed: BTreeSet::new(),
    };
    d.collect_gone_pods();
    // The API-server source syncs first once every kind is listed.
    if let Source::Dir(..) = &d.source {
        let r = d.sync_now().expect("a directory is whole from the start");
        d.record("start", &r, None);
        if d.opts.once {
            return Ok(());
        }
        d.started = true;
    }
    d.open_flows()?;
    d.run_loop()
}

/// Loading the node's programs from the network configuration
/// (`--cni-conf`) while no ADD has.
#[derive(Default)]
struct DatapathLoader {
    /// Loaded once: a datapath still missing after that is not ours to
    /// load again (another bpffs root).
    done: bool,
    /// The last failure, warned about once.
    failed: Option<String>,
}

impl DatapathLoader {
    /// Load the programs as the configuration says; true when they were.
    fn load(&mut self, opts: &Options) -> bool {
        let Some(path) = &opts.cni_conf else { return false };
        if self.done {
            return false;
        }
        let loaded = crate::cni_conf::datapath_of(path).and_then(|cfg| {
            let Some(cfg) = cfg else { return Ok(false) };
            if cfg.bpffs != opts.bpffs {
                return Err(format!(
                    "{}: datapath.bpffs {} is not the agent's --bpffs {}",
                    path.display(),
                    cfg.bpffs.display(),
                    opts.bpffs.display()
                ));
            }
            let node = sluice_tc_datapath::attach::Node::open(&cfg)
                .map_err(|e| format!("loading the node's programs: {e}"))?;
            info!(
                conf = %path.display(),
                upgraded = node.upgraded,
                relinked = node.relinked,
                "node's programs loaded from the network configuration (no pod's ADD had)"
            );
            Ok(true)
        });
        match loaded {
            Ok(done) => {
                self.done = done;
                self.failed = None;
                done
            }
            Err(e) => {
                if self.failed.as_ref() != Some(&e) {
                    warn!(error = %e, "cannot load the node's programs; waiting for a pod's ADD");
                }
                self.failed = Some(e);
                false
            }
        }
    }
}

/// Serve the proxy health if asked: false when its port could not be
/// bound (warned about unless `warned` already).
fn serve_proxy_health(opts: &Options, health: &Arc<crate::proxy_health::ProxyHealth>, warned: bool) -> bool {
    let Some(want) = opts.proxy_health else { return true };
    match crate::proxy_health::serve(want, health.clone()) {
        Ok(addr) => {
            info!(%addr, "serving the node's proxy health at /healthz and /livez");
            true
        }
        Err(e) => {
            if !warned {
                warn!(addr = %want, error = %e, "cannot serve the node's proxy health; tried again at each sync");
            }
            false
        }
    }
}

impl Daemon {
    fn open_flows(&mut self) -> Result<()> {
        if self.opts.no_flows {
            return Ok(());
        }
        let reader = FlowReader::open(&versioned_dir(&self.opts.bpffs)).context("opening the flow-event ring")?;
        let server = FlowServer::listen(&self.opts.flows_socket)
            .with_context(|| format!("listening on {}", self.opts.flows_socket.display()))?;
        info!(socket = %self.opts.flows_socket.display(), "serving flow events");
        self.flows = Some((reader, server));
        Ok(())
    }

    fn run_loop(&mut self) -> Result<()> {
        let mut gc_due = Instant::now() + self.gc.get();
        let mut flows_due = Instant::now();
        loop {
            self.probes.beat();
            if let Some((reader, server)) = &mut self.flows
                && Instant::now() >= flows_due
            {
                let recorded = self.record_names.get(&self.opts.cni_data_dir);
                server.publish(&reader.read(&[&self.agent, recorded], self.agent.maps()));
                flows_due = Instant::now() + FLOW_POLL;
            }
            let mut next = if self.flows.is_some() {
                gc_due.min(flows_due)
            } else {
                gc_due
            };
            if let Some((due, _)) = self.retry {
                next = next.min(due);
            }
            if let Some(due) = self.promote_due {
                next = next.min(due);
            }
            let next = next.min(Instant::now() + crate::probes::HEARTBEAT);
            let first = match self.rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(ev) => ev,
                Err(mpsc::RecvTimeoutError::Timeout) if self.retry.is_some_and(|(due, _)| Instant::now() >= due) => {
                    self.resync();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Timeout) if self.promote_due.is_some_and(|due| Instant::now() >= due) => {
                    self.promote_next();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < gc_due => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.collect_conntrack();
                    self.collect_gone_pods();
                    self.promote_failed.clear();
                    self.reap_failed.clear();
                    self.promote_due.get_or_insert(Instant::now());
                    gc_due = Instant::now() + self.gc.get();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => anyhow::bail!("the source stopped"),
            };
            let seen = Instant::now();
            let mut changes = Changes::default();
            changes.note(first);
            while let Ok(ev) = self.rx.recv_timeout(SETTLE) {
                changes.note(ev);
            }
            if changes.records {
                // A pod starting or going: no link is made until the node
                // has been quiet for a while.
                self.promote_due = Some(Instant::now() + crate::promote::QUIET);
            }
            if self.apply(changes, seen) && self.opts.once {
                return Ok(());
            }
            if self.opts.tcx_links == TcxLinks::NetAdmin && self.pods_changed() {
                // A pod may have gained NET_ADMIN (an ephemeral container).
                self.promote_due.get_or_insert(Instant::now());
            }
        }
    }

    /// Sync what the changes touched; true when a sync happened.
    fn apply(&mut self, changes: Changes, seen: Instant) -> bool {
        match &mut self.source {
            Source::Dir(dir, _) => {
                if changes.paths.is_empty() && !changes.records {
                    return false;
                }
                for p in &changes.paths {
                    if let Err(e) = dir.reload(p) {
                        warn!(error = %e, "manifest not applied; its previous objects stay");
                    }
                }
            }
            Source::Kube(..) if !changes.kube && !changes.records => return false,
            Source::Kube(..) => {}
        }
        if changes.kube || !changes.paths.is_empty() {
            self.proxy_health.queued(seen);
        }
        let Some(r) = self.sync_now() else {
            return false;
        };
        let why = if self.started { "change" } else { "start" };
        self.record(why, &r, self.started.then_some(seen));
        self.started = true;
        true
    }

    /// Move the next pod that asks for it from filters onto TCX links, and
    /// come back for the one after (events first).
    fn promote_next(&mut self) {
        use crate::promote::Moved;
        use sluice_tc_datapath::attach::Promotion;
        self.promote_due = None;
        if self.reap_next() {
            self.promote_due = Some(Instant::now() + PROMOTE_GAP);
            return;
        }
        if self.tcx_unsupported {
            return;
        }
        let pending: Vec<crate::promote::Pending> = crate::promote::pending(&self.opts.cni_data_dir, &self.opts.bpffs)
            .into_iter()
            .filter(|p| !self.promote_failed.contains(&p.key()))
            .collect();
        let Some(pending) = self.needing_links(pending) else {
            // The API's Pods are not listed yet: come back once they are.
            self.promote_due = Some(Instant::now() + crate::promote::QUIET);
            return;
        };
        if let Some(m) = &self.metrics {
            m.on_filters.set(pending.len() as i64);
        }
        let Some(p) = pending.first() else { return };
        let started = Instant::now();
        let moved = crate::promote::promote(&self.opts.cni_data_dir, &self.opts.bpffs, p);
        if let Some(m) = &self.metrics {
            let result = match &moved {
                Ok(Moved::Node(Promotion::Promoted)) => "moved",
                Ok(_) => "skipped",
                Err(_) => "failed",
            };
            m.tcx_moves.get_or_create(&vec![("result", result)]).inc();
            if matches!(moved, Ok(Moved::Node(Promotion::Promoted) | Moved::Gone)) {
                m.on_filters.dec();
            }
        }
        match moved {
            Ok(Moved::Gone) => info!(
                container = %p.container_id,
                ifname = %p.ifname,
                "pod gone (its DEL ran) before it was moved onto TCX links"
            ),
            Ok(Moved::Node(Promotion::Promoted)) => info!(
                container = %p.container_id,
                ifname = %p.ifname,
                ms = format!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
                left = pending.len() - 1,
                "pod moved from clsact filters onto TCX links"
            ),
            Ok(Moved::Node(Promotion::Already)) => {}
            Ok(Moved::Node(Promotion::NotAttached)) => {
                warn!(container = %p.container_id, ifname = %p.ifname, "the pod's interface is not in its namespace: not moved");
                self.promote_failed.insert(p.key());
            }
            Err(e) if e.is_tcx_unsupported() => {
                info!(error = %e, "no TCX on this kernel: pods stay on clsact filters");
                self.tcx_unsupported = true;
                return;
            }
            Err(e) => {
                warn!(container = %p.container_id, error = %e, "pod not moved onto TCX links; tried again later");
                self.promote_failed.insert(p.key());
            }
        }
        if pending.len() > 1 {
            self.promote_due = Some(Instant::now() + PROMOTE_GAP);
        }
    }

    /// Delete the next pod interface a DEL left on its links (reap.rs);
    /// true if there was one.
    fn reap_next(&mut self) -> bool {
        if self.reaper.is_none() {
            return false;
        }
        let Some((file, r)) = crate::reap::pending(&self.opts.cni_data_dir)
            .into_iter()
            .find(|(f, _)| !self.reap_failed.contains(f))
        else {
            return false;
        };
        let started = Instant::now();
        let result = crate::reap::reap(&file, &r);
        if let Some(m) = &self.metrics {
            let label = match &result {
                Ok(crate::reap::Reaped::Deleted) => "deleted",
                Ok(crate::reap::Reaped::AlreadyGone) => "gone",
                Err(_) => "failed",
            };
            m.reaped.get_or_create(&vec![("result", label)]).inc();
        }
        match result {
            Ok(done) => info!(
                ifname = %r.ifname,
                netns = %r.netns.display(),
                ?done,
                ms = format!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
                "a deleted pod's interface reaped"
            ),
            Err(e) => {
                warn!(record = %file.display(), error = %e, "a deleted pod's interface not reaped; tried again after the next collection");
                self.reap_failed.insert(file);
            }
        }
        true
    }

    /// Whether a Pod changed since the last call (the first call: true).
    fn pods_changed(&mut self) -> bool {
        let look = |o: &crate::objects::Objects, seen: Option<(u64, u64)>| {
            let (store, generation) = o.generation();
            let changed = match seen {
                Some((s, g)) if s == store => o.pods_changed_since(g).is_none_or(|mut keys| keys.next().is_some()),
                _ => true,
            };
            (changed, (store, generation))
        };
        let (changed, now) = match &self.source {
            Source::Dir(dir, _) => look(dir.objects(), self.pods_seen),
            Source::Kube(store, _) => look(store.lock().expect("store lock").objects(), self.pods_seen),
        };
        self.pods_seen = Some(now);
        changed
    }

    /// Of the pods on filters, those that need TCX links (`--tcx-links`):
    /// None while the API's Pods are not listed yet (a pod not found then
    /// is not yet one known to have no Pod object).
    fn needing_links(&self, pending: Vec<crate::promote::Pending>) -> Option<Vec<crate::promote::Pending>> {
        if self.opts.tcx_links == TcxLinks::All {
            return Some(pending);
        }
        let keep = |o: &crate::objects::Objects| {
            pending
                .into_iter()
                .filter(|p| p.pod.as_deref().and_then(|k| o.pod_administers_network(k)) != Some(false))
                .collect()
        };
        match &self.source {
            Source::Dir(dir, _) => Some(keep(dir.objects())),
            Source::Kube(store, _) => {
                let store = store.lock().expect("store lock");
                store.synced().then(|| keep(store.objects()))
            }
        }
    }

    /// The last sync left failures: try again with what the source holds.
    fn resync(&mut self) {
        if let Some(r) = self.sync_now() {
            self.record("retry", &r, None);
        }
    }

    /// Sync the maps with what the source holds and the node is now (its
    /// addresses, its CNI records); None while the API server's kinds are
    /// not all listed.
    fn sync_now(&mut self) -> Option<Report> {
        match sluice_tc_datapath::node_addresses::current() {
            Ok(addrs) => self.agent.set_local_addresses(addrs),
            // An empty set would withdraw every NodePort and the node's
            // identity from the pods' policy: keep the last one read.
            Err(e) => warn!(error = %e, "the node's addresses not read; the last ones stay"),
        }
        self.agent
            .set_pod_records(endpoint_gc::pod_records(&self.opts.cni_data_dir));
        let node = self.agent.node_name().to_string();
        let sync = |agent: &mut Agent, o: &crate::objects::Objects| {
            self.proxy_health.set_node(o.nodes().get(&node));
            agent.sync(o)
        };
        match &self.source {
            Source::Dir(dir, _) => Some(sync(&mut self.agent, dir.objects())),
            Source::Kube(store, _) => {
                let store = store.lock().expect("store lock");
                store.synced().then(|| sync(&mut self.agent, store.objects()))
            }
        }
    }

    /// List the namespaces that hold a policy for the CNI plugin (when
    /// they changed): written whole, then renamed over the old list.
    fn write_policy_namespaces(&mut self, now: &BTreeSet<String>) {
        if self.policy_namespaces.as_ref() == Some(now) {
            return;
        }
        let path = &self.opts.policy_namespaces_file;
        let body = serde_json::json!({"namespaces": now}).to_string();
        let tmp = path.with_extension("json.tmp");
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&tmp, body))
            .and_then(|()| std::fs::rename(&tmp, path));
        match written {
            Ok(()) => {
                info!(file = %path.display(), namespaces = now.len(), "policy namespaces written");
                self.policy_namespaces = Some(now.clone());
            }
            Err(e) => {
                warn!(file = %path.display(), error = %e, "cannot write the policy namespaces (pods start unheld)")
            }
        }
    }

    fn collect_conntrack(&mut self) {
        // `auto` follows the node (a pod on a new ENI brings its parent
        // in), and clsact filters, which a program upgrade does not move,
        // are put on the node's programs again.
        if !self.opts.uplinks.is_empty() {
            match crate::uplinks::attach_all(&self.opts.bpffs, &self.opts.uplinks, &self.uplinks) {
                Ok(u) => self.uplinks = u,
                Err(e) => warn!(error = format!("{e:#}"), "uplinks not brought up to date"),
            }
        }
        if let Err(e) = crate::uplinks::refresh(self.agent.maps_mut(), &self.uplinks) {
            warn!(error = %e, "uplink addresses not refreshed");
        }
        match self.agent.collect_conntrack() {
            Ok(st) => {
                let next = self.gc.adapt(&st);
                if let Some(m) = &self.metrics {
                    m.gc_removed.inc_by(st.removed as u64);
                    m.ct_largest_share.set(i64::from(st.largest_share));
                    m.ct_pods_at_limit.set(st.pods_at_limit as i64);
                    m.map("conntrack", st.scanned - st.removed, self.agent.conntrack_capacity());
                }
                info!(
                    scanned = st.scanned,
                    removed = st.removed,
                    refreshed = st.refreshed,
                    largest_pod_share = st.largest_share,
                    pods_at_limit = st.pods_at_limit,
                    next_s = next.as_secs(),
                    "conntrack collected"
                );
            }
            Err(e) => warn!(error = %e, "conntrack collection failed"),
        }
    }

    fn collect_gone_pods(&mut self) {
        let versioned = versioned_dir(&self.opts.bpffs);
        match endpoint_gc::collect(
            &self.opts.cni_data_dir,
            &versioned,
            self.agent.maps_mut(),
            &mut self.gone_pods,
        ) {
            Ok(gone) => {
                for g in gone {
                    info!(container = %g.container_id, ifname = %g.ifname, ips = ?g.ips, "pod's netns is gone: its datapath state removed");
                }
            }
            Err(e) => warn!(error = %e, "endpoint collection failed"),
        }
    }

    /// Log a sync and count it in the metrics; schedule a retry when it
    /// left failures.
    fn record(&mut self, why: &str, r: &Report, seen: Option<Instant>) {
        // Written, if perhaps not all of it (failures are retried and
        // reported): pods on this node have their Services and policy.
        self.probes.set_synced();
        self.write_policy_namespaces(&r.policy_namespaces);
        // The first sync (a whole cluster listed and parsed) leaves its
        // buffers free but held by the allocator's arenas: give them back,
        // so the agent's resident size is what it keeps. Not after every
        // sync: the next one would fault the pages back in.
        if !self.started && r.took > Duration::from_millis(50) {
            // SAFETY: malloc_trim only releases free memory of glibc's heap.
            unsafe {
                libc::malloc_trim(0);
            }
        }
        if let Some(h) = &mut self.health {
            h.set(self.agent.health_checks());
        }
        if r.service_failures == 0 {
            self.proxy_health.updated();
        }
        if self.proxy_health_unbound {
            self.proxy_health_unbound = !serve_proxy_health(&self.opts, &self.proxy_health, true);
        }
        for w in &r.warnings {
            warn!("{w}");
        }
        for f in &r.failures {
            warn!(failure = %f, "not written; retried");
        }
        if let Source::Kube(_, poster) = &self.source {
            poster.post(self.events.pass(&r.failures, &r.warnings));
        }
        self.retry = if r.failures.is_empty() {
            None
        } else {
            let wait = retry_wait(self.retry.map(|(_, w)| w));
            Some((Instant::now() + wait, wait))
        };
        info!(
            why,
            frontends = r.services.frontends,
            changed = r.services.changed,
            removed = r.services.removed,
            policy_endpoints = r.policy.endpoints,
            held = r.policy.held,
            released = r.policy.released,
            hold_flows = r.policy.hold_flows,
            writes = r.writes(),
            failing = r.failures.len(),
            sync_ms = format!("{:.2}", r.took.as_secs_f64() * 1e3),
            since_event_ms = seen.map(|s| format!("{:.2}", s.elapsed().as_secs_f64() * 1e3)),
            "synced"
        );
        let Some(m) = &self.metrics else { return };
        m.syncs.inc();
        m.writes.inc_by(r.writes() as u64);
        m.sync_failures.inc_by(r.failures.len() as u64);
        m.failing.set(r.failures.len() as i64);
        if let Some(s) = seen {
            m.source_to_map.observe(s.elapsed().as_secs_f64());
        }
        m.frontends.set(r.services.frontends as i64);
        m.backends.set(r.backends as i64);
        m.policy_endpoints.set(r.policy.endpoints as i64);
        m.policies.set(r.policies as i64);
        if let Ok((n, cap)) = self.agent.endpoint_map() {
            m.map("endpoints", n, cap);
        }
    }
}

/// The wait before the next retry of a sync that left failures, after the
/// last wait (none: the first retry).
fn retry_wait(last: Option<Duration>) -> Duration {
    last.map_or(RETRY_FIRST, |w| (w * 2).min(RETRY_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_server_is_an_https_url() {
        let u = api_server_url("https://10.0.0.10:6443").unwrap();
        assert_eq!((u.host(), u.port_u16()), (Some("10.0.0.10"), Some(6443)));
        assert!(api_server_url("https://api.example:443").is_ok());
        for bad in ["10.0.0.10:6443", "ftp://x", "not a url", "https://"] {
            assert!(api_server_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn failed_syncs_are_retried_sooner_then_later() {
        let mut w = retry_wait(None);
        assert_eq!(w, RETRY_FIRST);
        for _ in 0..10 {
            w = retry_wait(Some(w));
        }
        assert_eq!(w, RETRY_MAX, "at most a minute apart");
    }
}
