//! The warm pool: keeps the node's ENIs holding the addresses the targets
//! ask for, publishes them in the node file the CNI plugin allocates from,
//! and gives the surplus back after it has lasted `releaseAfterSeconds`.
//!
//! The cloud is the source of truth: nothing about ENIs is kept on disk.
//! A pass reads the leases (cheap, local) and, when its view is stale,
//! the instance's ENIs (one cloud call); it calls the cloud again only to
//! change something. ENIs it creates carry the cluster's and the node's
//! tags from their creation on, so ones a crash left unattached are found
//! and deleted at the next start and at every resync.

use crate::api::{Cloud, CloudEni, CloudError, Grant, Instance, NewEni, Revoke, Subnet};
use crate::config::{Family, PoolConfig};
use crate::limits::{self, Limits};
use crate::metrics::PoolMetrics;
use crate::node::{NodeLinks, NodeSide};
use ipnetwork::IpNetwork;
use sluice_ipam::eni::{Eni, EniId, NodeEnis};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};
use tracing::{info, warn};

pub const TAG_CLUSTER: &str = "sluice.dev/cluster";
pub const TAG_NODE: &str = "sluice.dev/node";

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error("{0}")]
    Node(String),
    #[error("{0}")]
    Config(String),
}

/// What one pass saw and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Addresses on the pool's ENIs (published or about to be).
    pub addresses: u32,
    pub in_use: u32,
    pub target: u32,
    pub granted: u32,
    pub released: u32,
    pub enis_created: u32,
    pub enis_deleted: u32,
    pub leaked_deleted: u32,
    pub cannot_grow: Option<String>,
}

pub struct EniPool<C: Cloud> {
    cloud: C,
    cfg: PoolConfig,
    metrics: PoolMetrics,
    node: NodeSide,
    links: Box<dyn NodeLinks>,
    instance: Instance,
    limits: Limits,
    tags: BTreeMap<String, String>,
    subnets: HashMap<String, Subnet>,
    /// Every ENI attached to the instance, as last read.
    attached: Vec<CloudEni>,
    stale: bool,
    last_resync: Option<Instant>,
    surplus_since: Option<Instant>,
    /// The cloud's last "no address left": growth waits for the next resync.
    dry: Option<String>,
}

/// What a node file write did: the surplus left out of it (to revoke
/// now), the addresses in it, those leased.
struct Published {
    releases: Vec<(String, Revoke)>,
    addresses: u32,
    in_use: u32,
}

/// One ENI of the pool with the addresses it may hand out.
struct Held<'a> {
    eni: &'a CloudEni,
    subnet: IpNetwork,
    addresses: Vec<IpAddr>,
}

impl<C: Cloud> EniPool<C> {
    /// Learn the instance and its limits, then delete this node's leaked
    /// ENIs before anything else is created.
    pub async fn start(
        cloud: C,
        cfg: PoolConfig,
        metrics: PoolMetrics,
        links: Box<dyn NodeLinks>,
    ) -> Result<EniPool<C>, PoolError> {
        let instance = cloud.instance().await?;
        let mut limits = match cfg
            .limits
            .or_else(|| limits::for_instance_type(&instance.instance_type))
        {
            Some(l) => l,
            None => {
                return Err(PoolError::Config(format!(
                    "instance type {} is not in the built-in limits table: give \"limits\" in the pool's configuration",
                    instance.instance_type
                )));
            }
        };
        if let Some(max) = cfg.max_enis {
            limits.enis = limits.enis.min(max.max(1));
        }
        let tags = BTreeMap::from([
            (TAG_CLUSTER.to_string(), cfg.cluster.clone()),
            (TAG_NODE.to_string(), instance.id.clone()),
        ]);
        let node = NodeSide::new(&cfg.node_file, &cfg.ipam.data_dir, &cfg.ipam.network);
        info!(cloud = %cloud.describe(), instance = %instance.id, instance_type = %instance.instance_type,
            enis = limits.enis, ipv4_per_eni = limits.ipv4_per_eni, "ENI pool starting");
        let mut pool = EniPool {
            cloud,
            cfg,
            metrics,
            node,
            links,
            instance,
            limits,
            tags,
            subnets: HashMap::new(),
            attached: Vec::new(),
            stale: true,
            last_resync: None,
            surplus_since: None,
            dry: None,
        };
        pool.collect_leaked().await?;
        Ok(pool)
    }

    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// Targets and timings may change while running; what the pool is
    /// (cloud, instance, files, family) may not.
    pub fn retarget(&mut self, cfg: PoolConfig) -> Result<(), PoolError> {
        let same = cfg.cloud == self.cfg.cloud
            && cfg.ec2 == self.cfg.ec2
            && cfg.cluster == self.cfg.cluster
            && cfg.node_file == self.cfg.node_file
            && cfg.ipam == self.cfg.ipam
            && cfg.family == self.cfg.family
            && cfg.prefix_delegation == self.cfg.prefix_delegation
            && cfg.use_primary_eni == self.cfg.use_primary_eni
            && cfg.max_enis == self.cfg.max_enis
            && cfg.limits == self.cfg.limits;
        if !same {
            return Err(PoolError::Config(
                "only targets, subnets, security groups and timings change without a restart".into(),
            ));
        }
        self.cfg = cfg;
        Ok(())
    }

    /// ENIs tagged with this cluster and node that are attached nowhere:
    /// left by a crash between create and attach, or detached and not yet
    /// deleted. Deleted.
    async fn collect_leaked(&mut self) -> Result<u32, PoolError> {
        let mut deleted = 0;
        for eni in self.cloud.tagged_enis(&self.tags).await? {
            if eni.status != "available" || eni.attachment.is_some() {
                continue;
            }
            match self.cloud.delete_eni(&eni.id).await {
                Ok(()) => {
                    info!(eni = %eni.id, "deleted a leaked ENI of this node");
                    self.metrics.leaked_enis_deleted.inc();
                    deleted += 1;
                }
                Err(e) => warn!(eni = %eni.id, error = %e, "could not delete a leaked ENI; next resync tries again"),
            }
        }
        self.last_resync = Some(Instant::now());
        Ok(deleted)
    }

    async fn refresh(&mut self) -> Result<(), PoolError> {
        self.attached = self.cloud.attached_enis(&self.instance.id).await?;
        for eni in &self.attached {
            if !self.subnets.contains_key(&eni.subnet_id) && !eni.subnet_id.is_empty() {
                let s = self.cloud.subnet(&eni.subnet_id).await?;
                self.subnets.insert(s.id.clone(), s);
            }
        }
        self.stale = false;
        Ok(())
    }

    fn is_ours(&self, eni: &CloudEni) -> bool {
        let tagged = self.tags.iter().all(|(k, v)| eni.tags.get(k) == Some(v));
        tagged || (self.cfg.use_primary_eni && eni.device_index() == Some(0))
    }

    fn subnet_net(&self, eni: &CloudEni) -> Option<IpNetwork> {
        let s = self.subnets.get(&eni.subnet_id)?;
        match self.cfg.family {
            Family::Ipv4 => Some(IpNetwork::V4(s.ipv4)),
            Family::Ipv6 => s.ipv6.map(IpNetwork::V6),
        }
    }

    /// The pool's ENIs with their usable addresses; an address reported on
    /// two ENIs (no cloud should) is kept on the first only.
    fn held(&self) -> Vec<Held<'_>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut ours: Vec<&CloudEni> = self.attached.iter().filter(|e| self.is_ours(e)).collect();
        ours.sort_by_key(|e| e.device_index());
        for eni in ours {
            let Some(subnet) = self.subnet_net(eni) else {
                continue;
            };
            let addresses = candidate_addresses(eni, self.cfg.family, self.cfg.prefix_delegation)
                .into_iter()
                .filter(|a| usable(subnet, *a) && seen.insert(*a))
                .collect();
            out.push(Held { eni, subnet, addresses });
        }
        out
    }

    /// Address slots left on `eni` (prefix delegation: /28 slots).
    fn room(&self, eni: &CloudEni) -> u32 {
        let used = match self.cfg.family {
            Family::Ipv4 => 1 + eni.secondary_ipv4.len() as u32 + eni.ipv4_prefixes.len() as u32,
            Family::Ipv6 => eni.ipv6.len() as u32,
        };
        let max = match self.cfg.family {
            Family::Ipv4 => self.limits.ipv4_per_eni,
            Family::Ipv6 => self.limits.ipv6_per_eni,
        };
        max.saturating_sub(used)
    }

    fn unit(&self) -> u32 {
        if self.cfg.prefix_delegation { 16 } else { 1 }
    }

    fn grant_of(&self, slots: u32) -> Grant {
        match (self.cfg.family, self.cfg.prefix_delegation) {
            (Family::Ipv6, _) => Grant::Ipv6(slots),
            (Family::Ipv4, true) => Grant::Ipv4Prefixes(slots),
            (Family::Ipv4, false) => Grant::Ipv4(slots),
        }
    }

    /// The most addresses the instance can hold in the pool.
    fn capacity(&self) -> u32 {
        let per_eni = match self.cfg.family {
            Family::Ipv4 => self.limits.ipv4_per_eni.saturating_sub(1),
            Family::Ipv6 => self.limits.ipv6_per_eni,
        } * self.unit();
        let primary = if self.cfg.use_primary_eni { 1 } else { 0 };
        let enis = self.limits.enis.saturating_sub(1) + primary;
        // ENIs of others (another plugin's, a storage driver's) take slots too.
        let foreign = self
            .attached
            .iter()
            .filter(|e| !self.is_ours(e) && e.device_index() != Some(0))
            .count() as u32;
        enis.saturating_sub(foreign) * per_eni
    }

    /// One pass. Errors are the pass's; the caller logs them and passes again.
    pub async fn pass(&mut self) -> Result<PassReport, PoolError> {
        let now = Instant::now();
        let mut report = PassReport::default();
        if self
            .last_resync
            .is_none_or(|t| now.duration_since(t) >= self.cfg.resync())
        {
            report.leaked_deleted = self.collect_leaked().await?;
            self.stale = true;
            self.dry = None;
        }
        if self.stale {
            self.refresh().await?;
        }
        let leased = self.node.leased().map_err(PoolError::Node)?;
        let (total, in_use, prefixes_in_use) = self.count(&leased);
        let wanted = self.cfg.target(in_use, prefixes_in_use);
        let capacity = self.capacity();
        let target = wanted.min(capacity);
        report.target = wanted;
        let mut cannot_grow = None;
        if total < target {
            self.surplus_since = None;
            match &self.dry {
                // The cloud said it has no address: asked again at the next
                // resync, not every poll (a dry subnet would otherwise cost
                // every node two calls a second).
                Some(why) => cannot_grow = Some(why.clone()),
                None => {
                    let grew = self.grow(target - total, &mut report).await;
                    if report.granted > 0 || report.enis_created > 0 {
                        self.refresh().await?;
                    }
                    match grew {
                        Ok(()) => {}
                        Err(e) if e.is_out_of_addresses() => {
                            cannot_grow = Some(e.to_string());
                            self.dry = Some(e.to_string());
                        }
                        Err(e) => {
                            self.stale = true;
                            return Err(e.into());
                        }
                    }
                }
            }
        } else if total > target {
            self.surplus_since.get_or_insert(now);
        } else {
            self.surplus_since = None;
        }
        if cannot_grow.is_none() && wanted > capacity {
            cannot_grow = Some(format!(
                "instance {} ({}) holds at most {capacity} pool addresses ({} ENIs of {} addresses)",
                self.instance.id, self.instance.instance_type, self.limits.enis, self.limits.ipv4_per_eni
            ));
        }
        let release_due = self
            .surplus_since
            .is_some_and(|t| now.duration_since(t) >= self.cfg.release_after());
        let Published {
            releases,
            addresses: published,
            in_use: in_use_now,
        } = self.publish(release_due, target, capacity, cannot_grow.clone())?;
        report.addresses = self.count(&HashSet::new()).0;
        report.in_use = in_use_now;
        report.cannot_grow = cannot_grow.clone();
        let mut published = published;
        if !releases.is_empty() {
            // Leaves the view as the cloud has it (read again after the
            // revokes, detached ENIs dropped).
            self.release(releases, &mut report).await?;
            self.surplus_since = None;
            report.addresses = self.count(&HashSet::new()).0;
            published = self.publish(false, target, capacity, cannot_grow)?.addresses;
        }
        self.metrics.addresses.set(published as i64);
        self.metrics.in_use.set(report.in_use as i64);
        self.metrics.target.set(report.target as i64);
        self.metrics
            .enis
            .set(self.attached.iter().filter(|e| self.is_ours(e)).count() as i64);
        self.metrics.cannot_grow.set(i64::from(report.cannot_grow.is_some()));
        Ok(report)
    }

    /// Write the node file from the pool's ENIs on the node, under the
    /// lease store's lock; when `release_due`, pick the surplus to give
    /// back from the leases read under that lock and leave it out.
    /// Returns what to revoke, the addresses published, those in use.
    fn publish(
        &self,
        release_due: bool,
        target: u32,
        capacity: u32,
        cannot_grow: Option<String>,
    ) -> Result<Published, PoolError> {
        let macs = self.links.macs();
        let held = self.held();
        for h in held.iter().filter(|h| macs.contains(&h.eni.mac)) {
            if let Err(e) = self.links.ensure_up(&h.eni.mac) {
                warn!(eni = %h.eni.id, error = %e, "ENI interface is down and could not be brought up");
            }
        }
        self.node
            .publish(|leased, store_written| {
                let (total, in_use, prefixes_in_use) = count(&held, leased, self.cfg.prefix_delegation);
                // The leases may have grown since the pass read them.
                let keep = target.max(self.cfg.target(in_use, prefixes_in_use).min(capacity));
                // A lease store never written is no pods, or the wrong
                // store (`ipam.network` not the conflist's name): then
                // every address would look free. Nothing goes back until
                // the plugin has written it once.
                if release_due && !store_written {
                    warn!(store = %self.node.store_dir().display(),
                        "no lease store written yet: releasing nothing (is ipam.network the conflist's name?)");
                }
                let releases = if release_due && store_written && total > keep {
                    pick_releases(
                        &held,
                        leased,
                        total - keep,
                        self.unit(),
                        self.cfg.family,
                        self.cfg.prefix_delegation,
                    )
                } else {
                    Vec::new()
                };
                let going: HashSet<IpAddr> = releases.iter().flat_map(|(_, r)| r.addresses()).collect();
                let node = NodeEnis {
                    enis: held
                        .iter()
                        .filter(|h| macs.contains(&h.eni.mac))
                        .map(|h| Eni {
                            id: EniId {
                                name: None,
                                mac: Some(h.eni.mac.clone()),
                            },
                            subnet: h.subnet,
                            gateway: None,
                            ips: h.addresses.iter().copied().filter(|a| !going.contains(a)).collect(),
                        })
                        .collect(),
                    cannot_grow,
                };
                let published = node.enis.iter().map(|e| e.ips.len() as u32).sum::<u32>();
                (
                    node,
                    Published {
                        releases,
                        addresses: published,
                        in_use,
                    },
                )
            })
            .map_err(PoolError::Node)
    }

    /// (addresses, of them leased, prefixes holding a lease).
    fn count(&self, leased: &HashSet<IpAddr>) -> (u32, u32, u32) {
        count(&self.held(), leased, self.cfg.prefix_delegation)
    }

    /// Ask for `need` more addresses: on the pool's ENIs with room first,
    /// then on new ENIs while the instance has slots.
    async fn grow(&mut self, need: u32, report: &mut PassReport) -> Result<(), CloudError> {
        let unit = self.unit();
        let mut slots = need.div_ceil(unit);
        let ours: Vec<CloudEni> = self.attached.iter().filter(|e| self.is_ours(e)).cloned().collect();
        for eni in &ours {
            let n = self.room(eni).min(slots);
            if n == 0 || self.subnet_net(eni).is_none() {
                continue;
            }
            self.cloud.grant(&eni.id, self.grant_of(n)).await?;
            report.granted += n * unit;
            slots -= n;
            if slots == 0 {
                return Ok(());
            }
        }
        while slots > 0 {
            let attached = self.attached.len() as u32;
            if attached >= self.limits.enis {
                return Ok(());
            }
            let Some(index) =
                (1..self.limits.enis).find(|i| self.attached.iter().all(|e| e.device_index() != Some(*i)))
            else {
                return Ok(());
            };
            let per_eni = match self.cfg.family {
                Family::Ipv4 => self.limits.ipv4_per_eni.saturating_sub(1),
                Family::Ipv6 => self.limits.ipv6_per_eni,
            };
            let n = per_eni.min(slots);
            let eni = self.create_and_attach(index, n).await?;
            report.enis_created += 1;
            if self.cfg.prefix_delegation {
                self.cloud.grant(&eni.id, Grant::Ipv4Prefixes(n)).await?;
            }
            report.granted += n * unit;
            slots -= n;
            self.attached.push(eni);
        }
        Ok(())
    }

    /// A new ENI with `n` addresses (prefix delegation: none yet), in the
    /// first configured subnet with room, attached at `index`.
    async fn create_and_attach(&mut self, index: u32, n: u32) -> Result<CloudEni, CloudError> {
        let subnets = if self.cfg.subnets.is_empty() {
            vec![self.instance.subnet_id.clone()]
        } else {
            self.cfg.subnets.clone()
        };
        let groups = if self.cfg.security_groups.is_empty() {
            self.instance.security_groups.clone()
        } else {
            self.cfg.security_groups.clone()
        };
        let mut last = None;
        for subnet in subnets {
            let new = NewEni {
                subnet_id: subnet.clone(),
                security_groups: groups.clone(),
                description: format!("sluice ENI pool of {} ({})", self.instance.id, self.cfg.cluster),
                tags: self.tags.clone(),
                ipv4_count: if self.cfg.family == Family::Ipv4 && !self.cfg.prefix_delegation {
                    n
                } else {
                    0
                },
                ipv6_count: if self.cfg.family == Family::Ipv6 { n } else { 0 },
            };
            let eni = match self.cloud.create_eni(&new).await {
                Ok(e) => e,
                // The next subnet may have room.
                Err(e) if e.is_out_of_addresses() => {
                    warn!(subnet = %subnet, error = %e, "subnet has no address left for a new ENI");
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            info!(eni = %eni.id, subnet = %subnet, device_index = index, "created an ENI");
            match self.cloud.attach_eni(&eni.id, &self.instance.id, index).await {
                Ok(attachment) => {
                    let mut eni = eni;
                    eni.attachment = Some(crate::api::Attachment {
                        id: attachment,
                        instance_id: self.instance.id.clone(),
                        device_index: index,
                    });
                    if !self.subnets.contains_key(&eni.subnet_id) {
                        let s = self.cloud.subnet(&eni.subnet_id).await?;
                        self.subnets.insert(s.id.clone(), s);
                    }
                    return Ok(eni);
                }
                Err(e) => {
                    // Tagged: if this delete fails too, the next resync's collection deletes it.
                    if let Err(d) = self.cloud.delete_eni(&eni.id).await {
                        warn!(eni = %eni.id, error = %d, "could not delete an ENI that failed to attach");
                    }
                    return Err(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| CloudError::Setup("no subnet configured for new ENIs".into())))
    }

    async fn release(&mut self, releases: Vec<(String, Revoke)>, report: &mut PassReport) -> Result<(), PoolError> {
        for (eni_id, revoke) in &releases {
            self.cloud.revoke(eni_id, revoke).await?;
            report.released += revoke.addresses().len() as u32;
            info!(eni = %eni_id, addresses = revoke.len(), "released surplus addresses");
        }
        // ENIs left with nothing to hand out and no pod go back too.
        self.refresh().await?;
        let leased = self.node.leased().map_err(PoolError::Node)?;
        let empty: Vec<(String, String)> = self
            .held()
            .iter()
            .filter(|h| {
                h.eni.device_index() != Some(0)
                    && h.eni.secondary_ipv4.is_empty()
                    && h.eni.ipv4_prefixes.is_empty()
                    && h.eni.ipv6.is_empty()
                    && !h.addresses.iter().any(|a| leased.contains(a))
            })
            .filter_map(|h| Some((h.eni.id.clone(), h.eni.attachment.as_ref()?.id.clone())))
            .collect();
        for (eni, attachment) in empty {
            self.cloud.detach_eni(&attachment).await?;
            self.attached.retain(|e| e.id != eni);
            // The cloud may take a moment to detach; the next collection
            // deletes what this delete could not.
            match self.cloud.delete_eni(&eni).await {
                Ok(()) => {
                    report.enis_deleted += 1;
                    info!(eni = %eni, "released an empty ENI");
                }
                Err(e) => warn!(eni = %eni, error = %e, "detached an empty ENI; deleting it at the next resync"),
            }
        }
        Ok(())
    }
}

/// The addresses `eni` carries for the pool's family.
fn candidate_addresses(eni: &CloudEni, family: Family, prefixes: bool) -> Vec<IpAddr> {
    match family {
        Family::Ipv4 if prefixes => eni
            .ipv4_prefixes
            .iter()
            .flat_map(|p| p.iter().map(IpAddr::V4))
            .collect(),
        Family::Ipv4 => eni.secondary_ipv4.iter().map(|a| IpAddr::V4(*a)).collect(),
        Family::Ipv6 => eni.ipv6.iter().map(|a| IpAddr::V6(*a)).collect(),
    }
}

/// An address a pod may use: inside its subnet, not one the VPC keeps
/// (IPv4: the network address, the next three, the broadcast address;
/// IPv6: the network address and the router's `::1`).
fn usable(subnet: IpNetwork, a: IpAddr) -> bool {
    if !subnet.contains(a) {
        return false;
    }
    match (subnet, a) {
        (IpNetwork::V4(n), IpAddr::V4(v)) => {
            let (net, bcast) = (u32::from(n.network()), u32::from(n.broadcast()));
            let x = u32::from(v);
            x > net + 3 && x < bcast
        }
        (IpNetwork::V6(n), IpAddr::V6(v)) => {
            let net = u128::from(n.network());
            let x = u128::from(v);
            x > net + 1
        }
        _ => false,
    }
}

fn prefix_of(a: IpAddr) -> Option<Ipv4Addr> {
    match a {
        IpAddr::V4(v) => Some(Ipv4Addr::from(u32::from(v) & !0xf)),
        IpAddr::V6(_) => None,
    }
}

fn count(held: &[Held], leased: &HashSet<IpAddr>, prefixes: bool) -> (u32, u32, u32) {
    let mut total = 0;
    let mut in_use = 0;
    let mut busy_prefixes = HashSet::new();
    for h in held {
        for a in &h.addresses {
            total += 1;
            if leased.contains(a) {
                in_use += 1;
                if prefixes {
                    busy_prefixes.insert(prefix_of(*a));
                }
            }
        }
    }
    (total, in_use, busy_prefixes.len() as u32)
}

/// At most `surplus` free addresses to give back, from the ENIs holding
/// the fewest pods first (they may empty and go back whole). Prefix
/// delegation gives back whole /28s no pod uses.
fn pick_releases(
    held: &[Held],
    leased: &HashSet<IpAddr>,
    surplus: u32,
    unit: u32,
    family: Family,
    prefixes: bool,
) -> Vec<(String, Revoke)> {
    let mut order: Vec<&Held> = held.iter().collect();
    order.sort_by_key(|h| {
        (
            h.addresses.iter().filter(|a| leased.contains(a)).count(),
            std::cmp::Reverse(h.eni.device_index()),
        )
    });
    let mut left = surplus;
    let mut out = Vec::new();
    for h in order {
        if left < unit {
            break;
        }
        let revoke = if prefixes {
            let free: Vec<_> = h
                .eni
                .ipv4_prefixes
                .iter()
                .filter(|p| !p.iter().any(|a| leased.contains(&IpAddr::V4(a))))
                .take((left / unit) as usize)
                .copied()
                .collect();
            Revoke::Ipv4Prefixes(free)
        } else {
            let free = h
                .addresses
                .iter()
                .rev()
                .filter(|a| !leased.contains(a))
                .take(left as usize);
            match family {
                Family::Ipv4 => Revoke::Ipv4(
                    free.filter_map(|a| match a {
                        IpAddr::V4(v) => Some(*v),
                        IpAddr::V6(_) => None,
                    })
                    .collect(),
                ),
                Family::Ipv6 => Revoke::Ipv6(
                    free.filter_map(|a| match a {
                        IpAddr::V6(v) => Some(*v),
                        IpAddr::V4(_) => None,
                    })
                    .collect(),
                ),
            }
        };
        if revoke.is_empty() {
            continue;
        }
        left -= (revoke.addresses().len() as u32).min(left);
        out.push((h.eni.id.clone(), revoke));
    }
    out
}

/// How long the agent waits before starting the pool again after it
/// could not start (no credentials yet, the cloud unreachable).
pub const RESTART_WAIT: Duration = Duration::from_secs(5);
