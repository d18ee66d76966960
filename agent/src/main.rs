//! `sluice-agent`: keeps this node's datapath maps in step with the
//! Kubernetes objects of a manifest directory (watched: a saved file is in
//! the maps within milliseconds).
//!
//!     sluice-agent --manifests conf/demo --node-name node-0

use anyhow::{Context, Result};
use clap::Parser;
use notify::{RecursiveMode, Watcher};
use sluice_agent::agent::{Agent, AgentError, Report};
use sluice_agent::endpoint_gc;
use sluice_agent::flows::{FlowReader, FlowServer};
use sluice_agent::gc::Interval;
use sluice_agent::kube_source::{self, KubeStore};
use sluice_agent::manifests::ManifestDir;
use sluice_agent::metrics::{self, AgentMetrics};
use sluice_agent::services::NodeView;
use sluice_tc_datapath::loader::versioned_dir;
use sluice_tc_datapath::maps::Maps;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tracing::{info, warn};

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Directory of Kubernetes manifests (YAML or JSON, several documents
    /// per file): Services, EndpointSlices, NetworkPolicies, Pods,
    /// Namespaces, Nodes. Other kinds are skipped.
    #[arg(long, required_unless_present = "kubernetes", conflicts_with = "kubernetes")]
    manifests: Option<PathBuf>,
    /// Read the cluster from the Kubernetes API server instead: in-cluster
    /// configuration, else $KUBECONFIG or ~/.kube/config.
    #[arg(long)]
    kubernetes: bool,
    /// The bpffs root the CNI plugin pins the datapath under (its
    /// `datapath.bpffs` setting).
    #[arg(long, default_value = "/sys/fs/bpf/sluice")]
    bpffs: PathBuf,
    /// This node's name, as EndpointSlices and Node objects give it
    /// (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// This node's own addresses (they may always reach its pods); the
    /// Node object's addresses are added.
    #[arg(long)]
    node_ip: Vec<IpAddr>,
    /// Sync once and exit.
    #[arg(long)]
    once: bool,
    /// Where to serve Prometheus metrics (`/metrics`); port 0 picks one.
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics: SocketAddr,
    /// Serve no metrics.
    #[arg(long)]
    no_metrics: bool,
    /// The Unix socket `sluicectl observe` reads flow events from.
    #[arg(long, default_value = "/run/sluice/flows.sock")]
    flows_socket: PathBuf,
    /// Read no flow events (another reader has the ring).
    #[arg(long)]
    no_flows: bool,
    /// The CNI plugin's `dataDir` (its endpoint records name each pod's
    /// netns; pods whose netns is gone lose their datapath state).
    #[arg(long, default_value = "/var/lib/sluice")]
    cni_data_dir: PathBuf,
}

/// How long to wait for the datapath before each new attempt.
const WAIT_FOR_DATAPATH: Duration = Duration::from_millis(500);
/// How often the flow-event ring is read (the datapath does not wake us).
const FLOW_POLL: Duration = Duration::from_millis(100);
/// Events that arrive this close together are one change (an editor's
/// save is several).
const SETTLE: Duration = Duration::from_millis(5);

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let node = NodeView {
        name: match &args.node_name {
            Some(n) => n.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .context("reading the host name (or give --node-name)")?
                .trim()
                .to_string(),
        },
    };
    // Watch before the first read, so that no change falls in between.
    let (tx, rx) = mpsc::channel::<Input>();
    let mut source = match &args.manifests {
        Some(path) => {
            let mut dir = ManifestDir::new(path);
            let files = tx.clone();
            let mut watcher = notify::recommended_watcher(move |ev| {
                let _ = files.send(Input::File(ev));
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
            Source::Dir(Box::new(dir), Box::new(watcher))
        }
        None => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let client = rt
                .block_on(kube::Client::try_default())
                .context("connecting to the Kubernetes API server")?;
            let store = Arc::new(Mutex::new(KubeStore::default()));
            let (s, kube_tx) = (store.clone(), tx.clone());
            std::thread::Builder::new().name("kube".into()).spawn(move || {
                rt.block_on(kube_source::watch(client, s, move || {
                    let _ = kube_tx.send(Input::Kube);
                }))
            })?;
            Source::Kube(store)
        }
    };
    drop(tx);
    let mut agent = loop {
        match Agent::open(&args.bpffs, node.clone(), args.node_ip.clone()) {
            Ok(a) => break a,
            Err(AgentError::NotLoaded(d)) if !args.once => {
                info!(dir = %d, "waiting for the datapath");
                std::thread::sleep(WAIT_FOR_DATAPATH);
            }
            Err(e) => return Err(e).context("opening the datapath maps"),
        }
    };
    info!(node = %node.name, source = %source.describe(), "agent started");
    let m = if args.once || args.no_metrics {
        None
    } else {
        let maps = Maps::open_pinned(&versioned_dir(&args.bpffs)).context("opening the maps for the metrics")?;
        let (registry, m) = metrics::registry(maps);
        let addr =
            metrics::serve(args.metrics, registry).with_context(|| format!("serving metrics on {}", args.metrics))?;
        info!(%addr, "serving metrics at /metrics");
        Some(m)
    };
    let mut gone_pods = BTreeSet::new();
    let mut endpoint_gc = |agent: &mut Agent| {
        let versioned = versioned_dir(&args.bpffs);
        match endpoint_gc::collect(&args.cni_data_dir, &versioned, agent.maps_mut(), &mut gone_pods) {
            Ok(gone) => {
                for g in gone {
                    info!(container = %g.container_id, ifname = %g.ifname, ips = ?g.ips, "pod's netns is gone: its datapath state removed");
                }
            }
            Err(e) => warn!(error = %e, "endpoint collection failed"),
        }
    };
    endpoint_gc(&mut agent);
    if let Source::Dir(dir, _) = &source {
        let r = agent.sync(dir.objects()).context("first sync")?;
        log_sync("start", &r, None);
        record(&agent, m.as_ref(), &r, None);
        if args.once {
            return Ok(());
        }
    }
    // (The API-server source syncs first once every kind is listed.)
    let mut started = matches!(source, Source::Dir(..));
    let mut flows = if args.no_flows {
        None
    } else {
        let reader = FlowReader::open(&versioned_dir(&args.bpffs)).context("opening the flow-event ring")?;
        let server = FlowServer::listen(&args.flows_socket)
            .with_context(|| format!("listening on {}", args.flows_socket.display()))?;
        info!(socket = %args.flows_socket.display(), "serving flow events");
        Some((reader, server))
    };
    let mut gc = Interval::default();
    let mut gc_due = Instant::now() + gc.get();
    let mut flows_due = Instant::now();
    loop {
        if let Some((reader, server)) = &mut flows
            && Instant::now() >= flows_due
        {
            server.publish(&reader.read(agent.pods(), agent.maps()));
            flows_due = Instant::now() + FLOW_POLL;
        }
        let next = if flows.is_some() { gc_due.min(flows_due) } else { gc_due };
        let first = match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(ev) => ev,
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < gc_due => continue,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                match agent.collect_conntrack() {
                    Ok(st) => {
                        let next = gc.adapt(&st);
                        if let Some(m) = &m {
                            m.gc_removed.inc_by(st.removed as u64);
                            m.map("conntrack", st.scanned - st.removed, agent.conntrack_capacity());
                        }
                        info!(
                            scanned = st.scanned,
                            removed = st.removed,
                            refreshed = st.refreshed,
                            next_s = next.as_secs(),
                            "conntrack collected"
                        );
                    }
                    Err(e) => warn!(error = %e, "conntrack collection failed"),
                }
                endpoint_gc(&mut agent);
                gc_due = Instant::now() + gc.get();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => anyhow::bail!("the source stopped"),
        };
        let seen = Instant::now();
        let mut paths: BTreeSet<PathBuf> = BTreeSet::new();
        // Only what changes a file's content or presence: reading the files
        // ourselves makes access events, which must not trigger a reload.
        let mut kube = false;
        let mut note = |input: Input| match input {
            Input::File(Ok(ev)) if ev.kind.is_create() || ev.kind.is_modify() || ev.kind.is_remove() => {
                paths.extend(ev.paths)
            }
            Input::File(Ok(_)) => {}
            Input::File(Err(e)) => warn!(error = %e, "file watcher"),
            Input::Kube => kube = true,
        };
        note(first);
        while let Ok(ev) = rx.recv_timeout(SETTLE) {
            note(ev);
        }
        let result = match &mut source {
            Source::Dir(dir, _) => {
                if paths.is_empty() {
                    continue;
                }
                for p in &paths {
                    if let Err(e) = dir.reload(p) {
                        warn!(error = %e, "manifest not applied; its previous objects stay");
                    }
                }
                agent.sync(dir.objects())
            }
            Source::Kube(store) => {
                if !kube {
                    continue;
                }
                let store = store.lock().expect("store lock");
                agent.sync(store.objects())
            }
        };
        match result {
            Ok(r) => {
                let why = if started { "change" } else { "start" };
                log_sync(why, &r, started.then_some(seen));
                record(&agent, m.as_ref(), &r, started.then_some(seen));
                if !started && args.once {
                    return Ok(());
                }
                started = true;
            }
            Err(e) => warn!(error = %e, "sync failed; retried on the next change"),
        }
    }
}

/// What wakes the loop: a file event, or the API-server store changed.
enum Input {
    File(notify::Result<notify::Event>),
    Kube,
}

/// Where the objects come from.
enum Source {
    /// The directory, and its watcher (alive as long as it is held).
    Dir(Box<ManifestDir>, #[allow(dead_code)] Box<notify::RecommendedWatcher>),
    Kube(Arc<Mutex<KubeStore>>),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Dir(d, _) => format!("manifests in {}", d.dir().display()),
            Source::Kube(_) => "the Kubernetes API server".into(),
        }
    }
}

fn record(agent: &Agent, m: Option<&AgentMetrics>, r: &Report, seen: Option<Instant>) {
    let Some(m) = m else { return };
    m.syncs.inc();
    m.writes.inc_by(r.writes() as u64);
    if let Some(s) = seen {
        m.source_to_map.observe(s.elapsed().as_secs_f64());
    }
    m.frontends.set(r.services.frontends as i64);
    m.backends.set(r.backends as i64);
    m.policy_endpoints.set(r.policy.endpoints as i64);
    m.policies.set(r.policies as i64);
    if let Ok((n, cap)) = agent.endpoint_map() {
        m.map("endpoints", n, cap);
    }
}

fn log_sync(why: &str, r: &Report, seen: Option<Instant>) {
    for w in &r.warnings {
        warn!("{w}");
    }
    info!(
        why,
        frontends = r.services.frontends,
        changed = r.services.changed,
        removed = r.services.removed,
        policy_endpoints = r.policy.endpoints,
        writes = r.writes(),
        sync_ms = format!("{:.2}", r.took.as_secs_f64() * 1e3),
        since_event_ms = seen.map(|s| format!("{:.2}", s.elapsed().as_secs_f64() * 1e3)),
        "synced"
    );
}
