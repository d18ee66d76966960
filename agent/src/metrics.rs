//! Prometheus metrics: the datapath's own counters (read from its per-CPU
//! map at each scrape), the agent's work (syncs, map writes, the time from
//! a source change to the map write, conntrack collection) and what the
//! maps hold (frontends, backends, pods under policy, conntrack entries
//! against the table's size).
//!
//! Served over HTTP at `/metrics` by a one-thread tokio runtime with
//! hyper, apart from the agent's own loop.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sluice_cloud::metrics::PoolMetrics;
use sluice_tc_datapath::loader::versioned_dir;
use sluice_tc_datapath::maps::{ObserveMaps, Source};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The agent's side, updated by its loop.
#[derive(Clone)]
pub struct AgentMetrics {
    pub syncs: Counter,
    pub writes: Counter,
    /// Seconds from a source change (the file event) to its maps written.
    pub source_to_map: Histogram,
    pub frontends: Gauge,
    pub backends: Gauge,
    pub policy_endpoints: Gauge,
    pub policies: Gauge,
    /// Map entries, and the map's size, by map (conntrack: as of the last
    /// collection pass).
    pub map_entries: Family<Vec<(&'static str, &'static str)>, Gauge>,
    pub map_capacity: Family<Vec<(&'static str, &'static str)>, Gauge>,
    pub gc_removed: Counter,
    /// The most conntrack entries one pod holds, and the pods at their
    /// limit (`datapath.ctPodLimit`), as of the last collection pass.
    pub ct_largest_share: Gauge,
    pub ct_pods_at_limit: Gauge,
    /// Writes a sync could not make (a failing object), and how many the
    /// last sync left (0: the maps say what the sources say).
    pub sync_failures: Counter,
    pub failing: Gauge,
    /// Pods moved from clsact filters onto TCX links, by result.
    pub tcx_moves: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Pod interfaces a DEL left on their TCX links, reaped, by result.
    pub reaped: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Pods still on filters that ask for links.
    pub on_filters: Gauge,
}

impl AgentMetrics {
    fn new() -> AgentMetrics {
        AgentMetrics {
            syncs: Counter::default(),
            writes: Counter::default(),
            source_to_map: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            frontends: Gauge::default(),
            backends: Gauge::default(),
            policy_endpoints: Gauge::default(),
            policies: Gauge::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            gc_removed: Counter::default(),
            ct_largest_share: Gauge::default(),
            ct_pods_at_limit: Gauge::default(),
            sync_failures: Counter::default(),
            failing: Gauge::default(),
            tcx_moves: Family::default(),
            reaped: Family::default(),
            on_filters: Gauge::default(),
        }
    }

    pub fn map(&self, map: &'static str, entries: usize, capacity: u32) {
        self.map_entries.get_or_create(&vec![("map", map)]).set(entries as i64);
        self.map_capacity
            .get_or_create(&vec![("map", map)])
            .set(i64::from(capacity));
    }
}

/// The datapath's packet and byte counters by reason and direction, read
/// through maps opened at the first scrape that finds them (the agent
/// serves metrics before the first pod loads the datapath: its ENI pool
/// has some to tell by then).
struct DatapathCounters {
    bpffs: PathBuf,
    /// Only the counters' maps: a scrape before the agent's start has
    /// remade the tables (tables.rs) must not hold the old ones open.
    maps: Mutex<Option<ObserveMaps>>,
}

impl std::fmt::Debug for DatapathCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatapathCounters")
    }
}

impl Collector for DatapathCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(rows) = self.maps.lock().map_err(|_| ()).and_then(|mut m| {
            if m.is_none() {
                *m = ObserveMaps::open(&mut Source::pinned(&versioned_dir(&self.bpffs))).ok();
            }
            m.as_ref().ok_or(())?.metrics().map_err(|_| ())
        }) else {
            return Ok(()); // a scrape without them beats a failed scrape
        };
        for (name, help, bytes) in [
            (
                "sluice_datapath_packets",
                "Packets the datapath handled, by reason and direction.",
                false,
            ),
            (
                "sluice_datapath_bytes",
                "Bytes the datapath handled, by reason and direction.",
                true,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for m in &rows {
                let labels = [("reason", m.reason.name()), ("direction", m.dir.name())];
                ConstCounter::new(if bytes { m.bytes } else { m.packets }).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Build the registry: the agent's metrics, the ENI pool's when it runs,
/// and the datapath's counters read through the maps pinned under `bpffs`
/// at each scrape.
pub fn registry(bpffs: &Path, pool: Option<&PoolMetrics>) -> (Registry, AgentMetrics) {
    let m = AgentMetrics::new();
    let mut r = Registry::default();
    r.register("sluice_syncs", "Syncs of the maps with the sources", m.syncs.clone());
    r.register(
        "sluice_map_writes",
        "Map entries written or removed by the agent",
        m.writes.clone(),
    );
    r.register(
        "sluice_source_to_map_seconds",
        "From a source change to its map entries written",
        m.source_to_map.clone(),
    );
    r.register(
        "sluice_frontends",
        "Service frontends (address, port, protocol) in the maps",
        m.frontends.clone(),
    );
    r.register("sluice_backends", "Service backends in the maps", m.backends.clone());
    r.register(
        "sluice_policy_endpoints",
        "Pods of this node some NetworkPolicy selects",
        m.policy_endpoints.clone(),
    );
    r.register(
        "sluice_policies",
        "NetworkPolicies in force in the cluster",
        m.policies.clone(),
    );
    r.register("sluice_map_entries", "Entries in a datapath map", m.map_entries.clone());
    r.register(
        "sluice_tcx_moves",
        "Pods moved from clsact filters onto TCX links (result: moved, skipped, failed)",
        m.tcx_moves.clone(),
    );
    r.register(
        "sluice_pod_interfaces_reaped",
        "Interfaces of deleted pods on TCX links, deleted by the agent once the node was quiet (result: deleted, gone, failed)",
        m.reaped.clone(),
    );
    r.register(
        "sluice_pods_on_filters",
        "Pods on clsact filters waiting for the agent to move them onto TCX links",
        m.on_filters.clone(),
    );
    r.register(
        "sluice_sync_failures",
        "Objects a sync could not write (the rest was written; retried)",
        m.sync_failures.clone(),
    );
    r.register(
        "sluice_sync_failing",
        "Objects the last sync could not write",
        m.failing.clone(),
    );
    r.register(
        "sluice_map_capacity",
        "The most entries a datapath map holds",
        m.map_capacity.clone(),
    );
    r.register(
        "sluice_conntrack_gc_removed",
        "Expired conntrack entries collected",
        m.gc_removed.clone(),
    );
    r.register(
        "sluice_conntrack_largest_pod_share",
        "The most conntrack entries one pod holds (last collection pass)",
        m.ct_largest_share.clone(),
    );
    r.register(
        "sluice_conntrack_pods_at_limit",
        "Pods holding their conntrack share (datapath.ctPodLimit): their new flows are dropped",
        m.ct_pods_at_limit.clone(),
    );
    if let Some(pool) = pool {
        pool.register(&mut r);
    }
    r.register_collector(Box::new(DatapathCounters {
        bpffs: bpffs.to_path_buf(),
        maps: Mutex::new(None),
    }));
    (r, m)
}

/// The registry in the Prometheus text format.
pub fn render(r: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, r).expect("writing to a String");
    out
}

/// Serve `/metrics` on `addr` from a thread of its own; returns the address
/// bound (port 0 picks one).
pub fn serve(addr: SocketAddr, registry: Registry) -> std::io::Result<SocketAddr> {
    crate::http::serve(
        addr,
        "metrics",
        move |path| {
            if path == "/metrics" {
                (
                    hyper::StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    render(&registry),
                )
            } else {
                (
                    hyper::StatusCode::NOT_FOUND,
                    "text/plain",
                    "not found: try /metrics\n".into(),
                )
            }
        },
        crate::http::Limits::default(),
    )
}
