//! One node's agent state: the pinned maps and what was written into them,
//! for Services and for policy. `sync` takes the whole set of objects and
//! writes the difference.

use crate::objects::Objects;
use crate::services::{NodeView, ServiceSync, ServiceTranslation, SyncStats};
use sluice_policy::{ApplyStats, NodeApplier, Translator};
use sluice_tc_datapath::layout::addr;
use sluice_tc_datapath::loader::versioned_dir;
use sluice_tc_datapath::maps::ct::GcStats;
use sluice_tc_datapath::maps::{Maps, MapsError};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the datapath maps under {0} are not there yet (no pod of this node has been set up by sluice)")]
    NotLoaded(String),
    #[error(transparent)]
    Maps(#[from] MapsError),
}

/// What one sync did.
#[derive(Debug, Default)]
pub struct Report {
    pub services: SyncStats,
    /// Backends in the maps after it.
    pub backends: usize,
    /// NetworkPolicies in force (cluster-wide).
    pub policies: usize,
    /// The namespaces that hold one: the pods the CNI plugin holds at ADD
    /// until their policy is written (its policy_hold.rs).
    pub policy_namespaces: std::collections::BTreeSet<String>,
    pub policy: ApplyStats,
    pub warnings: Vec<String>,
    /// What could not be written (Services and policy apart: one failing
    /// does not hold the other back); retried by the next sync.
    pub failures: Vec<String>,
    /// How many of them are the Services' (the rest are policy's).
    pub service_failures: usize,
    pub took: Duration,
}

impl Report {
    /// Map entries written or removed, Services and policy together.
    pub fn writes(&self) -> usize {
        self.services.writes + self.policy.written + self.policy.removed
    }
}

pub struct Agent {
    maps: Maps,
    services: ServiceSync,
    /// The Services translated, kept up to date Service by Service.
    translation: ServiceTranslation,
    translator: Translator,
    policy: NodeApplier,
    node: NodeView,
    /// The node's own addresses given on the command line; the Node
    /// object's are added.
    node_ips: Vec<IpAddr>,
    /// The addresses of the agent's own network namespace (the node's):
    /// the node too, whatever interface it sends from (a chained plugin's
    /// host-side veth, a bridge).
    local_addresses: Vec<IpAddr>,
    /// The (store, generation) of the objects the last policy pass read:
    /// the next reads only the Pods changed since.
    policy_seen: Option<(u64, u64)>,
    /// This node's CNI records that name their pod.
    records: Vec<crate::endpoint_gc::PodRecord>,
}

impl Agent {
    /// Open the node's pinned maps under the bpffs root the CNI plugin
    /// uses, and learn what they hold.
    pub fn open(bpffs: &Path, node: NodeView, node_ips: Vec<IpAddr>) -> Result<Agent, AgentError> {
        let dir = versioned_dir(bpffs);
        if !dir.join("maps").exists() {
            return Err(AgentError::NotLoaded(dir.display().to_string()));
        }
        // The first ADD may be loading the datapath right now: its maps are
        // pinned a moment before the programs' info is written.
        let maps = match Maps::open_pinned(&dir) {
            Err(MapsError::NotLoaded { .. }) => return Err(AgentError::NotLoaded(dir.display().to_string())),
            r => r?,
        };
        Agent::with_maps(maps, node, node_ips)
    }

    /// An agent over maps already open (a datapath loaded by the caller).
    pub fn with_maps(maps: Maps, node: NodeView, node_ips: Vec<IpAddr>) -> Result<Agent, AgentError> {
        Ok(Agent {
            services: ServiceSync::from_maps(&maps)?,
            translation: ServiceTranslation::default(),
            policy: NodeApplier::from_maps(&maps)?,
            translator: Translator::new(),
            maps,
            node,
            node_ips,
            local_addresses: Vec::new(),
            policy_seen: None,
            records: Vec::new(),
        })
    }

    pub fn maps_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }

    /// This node's name, as Node objects and EndpointSlices give it.
    pub fn node_name(&self) -> &str {
        &self.node.name
    }

    /// (entries, capacity) of the endpoint map.
    pub fn endpoint_map(&self) -> Result<(usize, u32), AgentError> {
        let e = self.maps.endpoints();
        Ok((e.entries()?.len(), e.capacity()))
    }

    /// The conntrack table's capacity.
    pub fn conntrack_capacity(&self) -> u32 {
        self.maps.ct().capacity()
    }

    /// The health check node ports of this node's Services, as of the
    /// last sync.
    pub fn health_checks(&self) -> BTreeMap<u16, crate::services::HealthCheck> {
        self.translation.health_checks()
    }

    /// One conntrack collection pass, which also sets every pod's share
    /// of the table to its true count.
    pub fn collect_conntrack(&mut self) -> Result<GcStats, AgentError> {
        let pods = self
            .maps
            .endpoints()
            .entries()?
            .into_iter()
            .map(|e| (addr(e.addr), e.endpoint_id))
            .collect();
        // The limit the programs were loaded with (0 when unknown: only the
        // report uses it).
        let limit = self
            .maps
            .observe()
            .info()
            .ok()
            .filter(|i| i.prog_hash != 0)
            .and_then(|i| i.config().ok())
            .map_or(0, |c| c.ct_pod_limit());
        let mut st = self.maps.ct_mut().collect_with_shares(&pods, limit)?;
        // Connections from outside (the uplinks' NAT entries) expire alike.
        let nat = self.maps.uplink_mut().collect(sluice_tc_datapath::maps::ct::now_ns())?;
        st.removed += nat;
        Ok(st)
    }

    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    /// The node's own addresses as of now (`node_addresses::current()`), for the
    /// next sync: they are the node's identity (`host`), which every pod
    /// lets in.
    pub fn set_local_addresses(&mut self, addrs: Vec<IpAddr>) {
        self.local_addresses = addrs;
    }

    /// Label keys left out of every identity (`--identity-exclude-labels`).
    pub fn exclude_identity_labels(&mut self, keys: Vec<String>) {
        self.translator.exclude_labels(keys);
    }

    /// This node's CNI records, for the next sync: a pod just started gets
    /// its policy (or its hold released) as soon as its Pod object is
    /// known, before the kubelet reports its address.
    pub fn set_pod_records(&mut self, records: Vec<crate::endpoint_gc::PodRecord>) {
        self.records = records;
    }

    /// Make the maps say what `o` says, as far as they can: what fails is
    /// in the report, and the rest is written.
    pub fn sync(&mut self, o: &Objects) -> Report {
        let started = Instant::now();
        self.translation.update(o, &self.node);
        let mut failures = Vec::new();
        let mut services = self
            .services
            .apply(&mut self.maps, self.translation.frontends())
            .unwrap_or_else(|e| {
                failures.push(format!("Services: {e}"));
                SyncStats::default()
            });
        failures.append(&mut services.failures);
        let service_failures = failures.len();
        // Rules for this node's pods only; identities for the cluster's.
        match self.maps.endpoints().entries() {
            Ok(e) => self.translator.set_local(Some(e.into_iter().map(|e| e.addr).collect())),
            Err(e) => failures.push(format!("NetworkPolicy: reading the endpoint map: {e}")),
        }
        let mut recorded: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for r in &self.records {
            recorded.entry(r.pod.clone()).or_default().extend(&r.ips);
        }
        // Only the Pods changed since the last pass, when the store says.
        let (store, generation) = o.generation();
        let changed: Option<std::collections::BTreeSet<&str>> = match self.policy_seen {
            Some((s, g)) if s == store => o.pods_changed_since(g).map(Iterator::collect),
            _ => None,
        };
        let d = self.translator.translate_changes(
            o.namespaces().values(),
            o.pods(),
            changed,
            o.policies().values(),
            &recorded,
        );
        self.policy_seen = Some((store, generation));
        // The held pods the agent now knows, by the name in their record.
        let known: std::collections::BTreeSet<u32> = self
            .records
            .iter()
            .filter(|r| o.pods().contains_key(&r.pod))
            .map(|r| r.endpoint_id)
            .collect();
        let mut hosts = self.node_ips.clone();
        for a in &self.local_addresses {
            if !hosts.contains(a) {
                hosts.push(*a);
            }
        }
        if let Some(n) = o.nodes().get(&self.node.name) {
            for a in n.status.iter().flat_map(|s| s.addresses.iter().flatten()) {
                if let Ok(ip) = a.address.parse()
                    && !hosts.contains(&ip)
                {
                    hosts.push(ip);
                }
            }
        }
        let policy = self
            .policy
            .apply_releasing(&mut self.maps, &d, &hosts, &known)
            .unwrap_or_else(|e| {
                failures.push(format!("NetworkPolicy: {e}"));
                ApplyStats::default()
            });
        let mut warnings = self.translation.warnings();
        if policy.unnamed > 0 {
            warnings.push(format!(
                "{} identity and policy names did not fit the names map: drop events and sluicectl show their numbers",
                policy.unnamed
            ));
        }
        warnings.append(&mut services.warnings);
        warnings.extend(d.warnings);
        Report {
            services,
            backends: self.services.backends(),
            policies: o.policies().len(),
            policy_namespaces: o
                .policies()
                .values()
                .map(|p| p.metadata.namespace.clone().unwrap_or_else(|| "default".into()))
                .collect(),
            policy,
            warnings,
            failures,
            service_failures,
            took: started.elapsed(),
        }
    }
}

/// Pods by address, as of the last sync: the ipcache's (pods with an
/// address of their own).
impl crate::flows::PodNames for Agent {
    fn pod_name(&self, ip: &IpAddr) -> Option<&str> {
        self.translator.pod_at(ip)
    }
}
