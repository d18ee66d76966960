//! A pool: where the addresses of one network come from (host-local style
//! range sets, or the secondary IPs of the node's ENIs) plus its lease store.

use crate::config::{DEFAULT_DATA_DIR, IpamConfig};
use crate::eni::{Eni, EniBackend, EniId, NodeEnis};
use crate::error::IpamError;
use crate::range::Range;
use crate::store::{Lease, LeasedEni, LockedStore, PoolState, now_secs};
use ipnetwork::IpNetwork;
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One address handed out, with what the pod needs to configure it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The address with the subnet's prefix length.
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// ENI pools: the ENI the pod interface must be attached to.
    pub eni: Option<EniId>,
}

enum Source {
    /// One address from each set (dual stack = two sets).
    Ranges(Vec<Vec<Range>>),
    /// One address, from one of the node's ENIs.
    Enis(Box<dyn EniBackend>),
}

pub struct Pool {
    name: String,
    source: Source,
    dir: PathBuf,
    lock_timeout: Duration,
}

impl Pool {
    /// `network` is the CNI network name: one pool (and store directory) per network.
    pub fn new(network: &str, cfg: &IpamConfig) -> Result<Pool, IpamError> {
        if network.is_empty() || network.contains('/') || network.starts_with('.') {
            return Err(IpamError::InvalidConfig(format!(
                "network name {network:?} cannot name a pool"
            )));
        }
        let source = match &cfg.eni_pool {
            Some(eni) => {
                if !cfg.ranges.is_empty() || cfg.subnet.is_some() {
                    return Err(IpamError::InvalidConfig(
                        "\"eniPool\" and \"ranges\"/\"subnet\" exclude each other: a pool draws from one source".into(),
                    ));
                }
                Source::Enis(eni.backend())
            }
            None => Source::Ranges(cfg.range_sets()?),
        };
        let data_dir = cfg.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        // Relative to what? The runtime's working directory is no place for leases.
        if !data_dir.is_absolute() {
            return Err(IpamError::InvalidConfig(format!(
                "ipam.dataDir {} must be an absolute path",
                data_dir.display()
            )));
        }
        let dir = data_dir.join(network);
        Ok(Pool {
            name: network.to_string(),
            source,
            dir,
            lock_timeout: Duration::from_millis(cfg.lock_timeout_ms.unwrap_or(10_000)),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many addresses one owner holds when fully allocated.
    pub fn addresses_per_owner(&self) -> usize {
        match &self.source {
            Source::Ranges(sets) => sets.len(),
            Source::Enis(_) => 1,
        }
    }

    fn lock(&self, exclusive: bool) -> Result<LockedStore, IpamError> {
        LockedStore::lock(&self.dir, &self.name, self.lock_timeout, exclusive)
    }

    fn describe_ranges<'a>(ranges: impl IntoIterator<Item = &'a Range>) -> String {
        ranges.into_iter().map(Range::describe).collect::<Vec<_>>().join(", ")
    }

    /// One address from each range set (or one ENI address) for
    /// (container id, ifname). Calling it again for the same owner returns
    /// the same addresses.
    pub fn allocate(
        &self,
        container_id: &str,
        ifname: &str,
        requested: &[IpAddr],
    ) -> Result<Vec<Allocation>, IpamError> {
        let lease = Lease {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            since: now_secs(),
            eni: None,
        };
        match &self.source {
            Source::Ranges(sets) => {
                // Refuse a requested address outside every range before taking the lock.
                for ip in requested {
                    if !sets.iter().flatten().any(|r| r.is_allocatable(*ip)) {
                        return Err(IpamError::NotInRange {
                            pool: self.name.clone(),
                            ip: ip.to_string(),
                            ranges: Self::describe_ranges(sets.iter().flatten()),
                        });
                    }
                }
                let store = self.lock(true)?;
                let mut state = store.load()?;
                let mut out = Vec::with_capacity(sets.len());
                let mut changed = false;
                for (idx, set) in sets.iter().enumerate() {
                    let (ip, range, new) = self.allocate_in_set(&mut state, idx, set, &lease, requested)?;
                    changed |= new;
                    out.push(Allocation {
                        address: IpNetwork::new(ip, range.subnet.prefix()).expect("prefix from a valid subnet"),
                        gateway: range.gateway,
                        eni: None,
                    });
                }
                if changed {
                    store.save(&state)?;
                }
                Ok(out)
            }
            Source::Enis(backend) => {
                let store = self.lock(true)?;
                // Read under the lock: the file may have changed since the last ADD.
                let node = backend.enis()?;
                let mut state = store.load()?;
                let (ip, leased, new) = self.allocate_on_eni(&mut state, &node, backend.as_ref(), lease, requested)?;
                if new {
                    store.save(&state)?;
                }
                Ok(vec![Allocation {
                    address: IpNetwork::new(ip, leased.subnet.prefix()).expect("prefix from a valid subnet"),
                    gateway: Some(leased.gateway),
                    eni: Some(leased.id),
                }])
            }
        }
    }

    fn allocate_in_set<'a>(
        &self,
        state: &mut PoolState,
        idx: usize,
        set: &'a [Range],
        lease: &Lease,
        requested: &[IpAddr],
    ) -> Result<(IpAddr, &'a Range, bool), IpamError> {
        let range_of = |ip: IpAddr| set.iter().find(|r| r.contains(ip));
        // Idempotent: an existing lease of this owner in this set wins.
        if let Some((ip, _)) = state
            .leases
            .iter()
            .find(|(ip, l)| same_owner(l, lease) && range_of(**ip).is_some())
        {
            return Ok((*ip, range_of(*ip).expect("checked"), false));
        }
        if let Some(ip) = requested
            .iter()
            .copied()
            .find(|ip| set.iter().any(|r| r.is_allocatable(*ip)))
        {
            self.take(state, ip, lease.clone())?;
            return Ok((ip, range_of(ip).expect("checked"), true));
        }
        // Walk the set's ranges in order, starting after the last address handed out.
        let step = |ri: usize, ip: IpAddr| -> (usize, IpAddr) {
            if set[ri].is_last(ip) {
                let n = (ri + 1) % set.len();
                (n, set[n].first())
            } else {
                (ri, set[ri].next_after(ip))
            }
        };
        let key = idx.to_string();
        let last = state
            .last_reserved
            .get(&key)
            .and_then(|l| set.iter().position(|r| r.contains(*l)).map(|i| (i, *l)));
        let (mut ri, mut ip) = match last {
            Some((i, l)) => step(i, l),
            None => (0, set[0].first()),
        };
        // Each range is at most its size plus the gateway: one lap visits every address.
        let lap: u128 = set.iter().map(|r| r.size() + 1).sum();
        for _ in 0..lap {
            if set[ri].is_allocatable(ip) && !state.leases.contains_key(&ip) {
                state.leases.insert(ip, lease.clone());
                state.last_reserved.insert(key, ip);
                return Ok((ip, &set[ri], true));
            }
            (ri, ip) = step(ri, ip);
        }
        Err(IpamError::Exhausted {
            pool: self.name.clone(),
            range: Self::describe_ranges(set),
        })
    }

    /// Lease a requested address, unless someone else holds it.
    fn take(&self, state: &mut PoolState, ip: IpAddr, lease: Lease) -> Result<(), IpamError> {
        if let Some(owner) = state.leases.get(&ip) {
            return Err(IpamError::Taken {
                pool: self.name.clone(),
                ip: ip.to_string(),
                owner: format!("{}/{}", owner.container_id, owner.ifname),
            });
        }
        state.leases.insert(ip, lease);
        Ok(())
    }

    /// ENI pools: the least loaded ENI with a free address wins, so pods
    /// spread over the ENIs' bandwidth; within it, allocation continues after
    /// the last address it handed out. Only addresses listed now are handed
    /// out: one dropped from the file stays leased but never comes back.
    fn allocate_on_eni(
        &self,
        state: &mut PoolState,
        node: &NodeEnis,
        backend: &dyn EniBackend,
        mut lease: Lease,
        requested: &[IpAddr],
    ) -> Result<(IpAddr, LeasedEni, bool), IpamError> {
        if let Some((ip, l)) = state
            .leases
            .iter()
            .find(|(_, l)| same_owner(l, &lease) && l.eni.is_some())
        {
            return Ok((*ip, l.eni.clone().expect("checked"), false));
        }
        let leased_on = |eni: &Eni| LeasedEni {
            id: eni.id.clone(),
            subnet: eni.subnet,
            gateway: eni.gateway(),
        };
        if let Some(ip) = requested.first() {
            let eni = node
                .enis
                .iter()
                .find(|e| e.ips.contains(ip))
                .ok_or_else(|| IpamError::NotInRange {
                    pool: self.name.clone(),
                    ip: ip.to_string(),
                    ranges: format!("the ENI addresses of {}", backend.describe()),
                })?;
            let leased = leased_on(eni);
            lease.eni = Some(leased.clone());
            self.take(state, *ip, lease)?;
            return Ok((*ip, leased, true));
        }
        let load = |eni: &Eni| {
            state
                .leases
                .values()
                .filter(|l| l.eni.as_ref().is_some_and(|le| le.id.same(&eni.id)))
                .count()
        };
        let mut order: Vec<(usize, usize)> = node.enis.iter().enumerate().map(|(i, e)| (load(e), i)).collect();
        order.sort();
        for (_, i) in order {
            let eni = &node.enis[i];
            let key = format!("eni:{}", eni.id.key());
            let after = state
                .last_reserved
                .get(&key)
                .and_then(|l| eni.ips.iter().position(|ip| ip == l))
                .map_or(0, |p| p + 1);
            let n = eni.ips.len();
            if let Some(ip) = (0..n)
                .map(|k| eni.ips[(after + k) % n])
                .find(|ip| !state.leases.contains_key(ip))
            {
                let leased = leased_on(eni);
                lease.eni = Some(leased.clone());
                state.leases.insert(ip, lease);
                state.last_reserved.insert(key, ip);
                return Ok((ip, leased, true));
            }
        }
        let total: usize = node.enis.iter().map(|e| e.ips.len()).sum();
        Err(IpamError::Exhausted {
            pool: self.name.clone(),
            range: format!(
                "{} ENIs with {total} addresses from {}",
                node.enis.len(),
                backend.describe()
            ),
        })
    }

    /// Release every address of (container id, ifname). Idempotent.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        self.release_where(|l| l.container_id == container_id && l.ifname == ifname)
    }

    /// Release every lease whose owner is not in `valid` (CNI GC).
    pub fn gc(&self, valid: &[(String, String)]) -> Result<Vec<IpAddr>, IpamError> {
        let valid: HashSet<(&str, &str)> = valid.iter().map(|(c, i)| (c.as_str(), i.as_str())).collect();
        self.release_where(|l| !valid.contains(&(l.container_id.as_str(), l.ifname.as_str())))
    }

    fn release_where(&self, doomed: impl Fn(&Lease) -> bool) -> Result<Vec<IpAddr>, IpamError> {
        let store = self.lock(true)?;
        let Some(mut state) = store.load_for_release(&self.name)? else {
            return Ok(Vec::new());
        };
        let gone: Vec<IpAddr> = state
            .leases
            .iter()
            .filter(|(_, l)| doomed(l))
            .map(|(ip, _)| *ip)
            .collect();
        if !gone.is_empty() {
            for ip in &gone {
                state.leases.remove(ip);
            }
            store.save(&state)?;
        }
        Ok(gone)
    }

    pub fn leases(&self) -> Result<Vec<(IpAddr, Lease)>, IpamError> {
        let store = self.lock(false)?;
        Ok(store.load()?.leases.into_iter().collect())
    }

    /// ENI pools: why the agent's pool says it cannot grow, if it does.
    pub fn cannot_grow(&self) -> Result<Option<String>, IpamError> {
        match &self.source {
            Source::Ranges(_) => Ok(None),
            Source::Enis(backend) => Ok(backend.enis()?.cannot_grow),
        }
    }

    /// Free addresses per range set (one entry for an ENI pool), for STATUS.
    pub fn free_per_set(&self) -> Result<Vec<u128>, IpamError> {
        let leases = self.leases()?;
        let used = |pred: &dyn Fn(IpAddr) -> bool| leases.iter().filter(|(ip, _)| pred(*ip)).count() as u128;
        Ok(match &self.source {
            Source::Ranges(sets) => sets
                .iter()
                .map(|set| {
                    let size: u128 = set.iter().map(Range::size).sum();
                    size.saturating_sub(used(&|ip| set.iter().any(|r| r.is_allocatable(ip))))
                })
                .collect(),
            Source::Enis(backend) => {
                let node = backend.enis()?;
                let listed: HashSet<IpAddr> = node.enis.iter().flat_map(|e| e.ips.iter().copied()).collect();
                vec![(listed.len() as u128).saturating_sub(used(&|ip| listed.contains(&ip)))]
            }
        })
    }
}

fn same_owner(a: &Lease, b: &Lease) -> bool {
    a.container_id == b.container_id && a.ifname == b.ifname
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::HashSet;

    fn pool(dir: &std::path::Path, ranges: serde_json::Value) -> Pool {
        let cfg: IpamConfig =
            serde_json::from_value(json!({"type": "sluice-ipam", "ranges": ranges, "dataDir": dir})).unwrap();
        Pool::new("testnet", &cfg).unwrap()
    }

    #[test]
    fn slash26_hands_out_exactly_61_then_exhausts() {
        let d = tempfile::tempdir().unwrap();
        let p = pool(d.path(), json!([[{"subnet": "10.244.1.0/26"}]]));
        let mut seen = HashSet::new();
        for i in 0..61 {
            let a = p.allocate(&format!("c{i}"), "eth0", &[]).unwrap();
            assert_eq!(a[0].address.prefix(), 26);
            assert!(seen.insert(a[0].address.ip()), "duplicate {}", a[0].address);
        }
        for bad in ["10.244.1.0", "10.244.1.1", "10.244.1.63"] {
            assert!(!seen.contains(&bad.parse::<IpAddr>().unwrap()), "{bad} handed out");
        }
        let e = p.allocate("c61", "eth0", &[]).unwrap_err();
        assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
        assert!(
            e.to_string().contains("testnet") && e.to_string().contains("10.244.1.0/26"),
            "{e}"
        );
        assert_eq!(p.free_per_set().unwrap(), vec![0]);
        for i in 0..61 {
            p.release(&format!("c{i}"), "eth0").unwrap();
        }
        assert!(p.leases().unwrap().is_empty());
        assert_eq!(p.free_per_set().unwrap(), vec![61]);
    }

    #[test]
    fn idempotent_and_no_immediate_reuse() {
        let d = tempfile::tempdir().unwrap();
        let p = pool(
            d.path(),
            json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/120"}]]),
        );
        let a = p.allocate("c1", "eth0", &[]).unwrap();
        assert_eq!(a.len(), 2, "one address per range set (dual stack)");
        assert_eq!(p.allocate("c1", "eth0", &[]).unwrap(), a, "same owner, same lease");
        assert_ne!(p.allocate("c1", "eth1", &[]).unwrap(), a, "other ifname, other lease");
        p.release("c1", "eth0").unwrap();
        p.release("c1", "eth0").unwrap();
        let b = p.allocate("c2", "eth0", &[]).unwrap();
        assert_ne!(
            b[0].address.ip(),
            a[0].address.ip(),
            "released address not reused at once"
        );
    }

    #[test]
    fn requested_addresses() {
        let d = tempfile::tempdir().unwrap();
        let p = pool(d.path(), json!([[{"subnet": "10.0.0.0/24"}]]));
        let want: IpAddr = "10.0.0.77".parse().unwrap();
        assert_eq!(p.allocate("c1", "eth0", &[want]).unwrap()[0].address.ip(), want);
        assert!(matches!(
            p.allocate("c2", "eth0", &[want]),
            Err(IpamError::Taken { .. })
        ));
        assert!(matches!(
            p.allocate("c2", "eth0", &["10.9.0.1".parse().unwrap()]),
            Err(IpamError::NotInRange { .. })
        ));
        assert!(
            matches!(
                p.allocate("c2", "eth0", &["10.0.0.1".parse().unwrap()]),
                Err(IpamError::NotInRange { .. })
            ),
            "gateway"
        );
    }

    #[test]
    fn gc_keeps_only_valid_attachments() {
        let d = tempfile::tempdir().unwrap();
        let p = pool(d.path(), json!([[{"subnet": "10.0.0.0/24"}]]));
        for c in ["a", "b", "c"] {
            p.allocate(c, "eth0", &[]).unwrap();
        }
        let gone = p.gc(&[("b".into(), "eth0".into())]).unwrap();
        assert_eq!(gone.len(), 2);
        let left = p.leases().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1.container_id, "b");
    }

    #[test]
    fn corrupt_store_is_an_error_not_a_reset() {
        let d = tempfile::tempdir().unwrap();
        let p = pool(d.path(), json!([[{"subnet": "10.0.0.0/24"}]]));
        p.allocate("a", "eth0", &[]).unwrap();
        std::fs::write(d.path().join("testnet/leases.json"), b"{garbage").unwrap();
        assert!(matches!(p.allocate("b", "eth0", &[]), Err(IpamError::Corrupt { .. })));
        // DEL keeps succeeding: the store goes aside, nothing is released...
        assert!(p.release("a", "eth0").unwrap().is_empty());
        assert!(d.path().join("testnet/leases.json.corrupt").is_file());
        // ... and nothing is allocated until it is rebuilt.
        let e = p.allocate("b", "eth0", &[]).unwrap_err();
        assert!(matches!(e, IpamError::Quarantined { .. }), "{e}");
        assert!(e.to_string().contains("sluice-ipam rebuild"), "{e}");
        assert!(p.release("a", "eth0").unwrap().is_empty(), "DEL again");
    }

    #[test]
    fn a_store_torn_before_this_boot_starts_empty() {
        let d = tempfile::tempdir().unwrap();
        let p = pool(d.path(), json!([[{"subnet": "10.0.0.0/24"}]]));
        p.allocate("a", "eth0", &[]).unwrap();
        let store = d.path().join("testnet/leases.json");
        // What a power loss leaves of a file not yet written out: nothing.
        std::fs::write(&store, b"").unwrap();
        let up = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).unwrap();
        let before_boot = std::time::SystemTime::now() - std::time::Duration::from_secs(up.tv_sec() as u64 + 60);
        std::fs::File::options()
            .write(true)
            .open(&store)
            .unwrap()
            .set_modified(before_boot)
            .unwrap();
        // Its pods died with the node: allocation goes on from an empty store.
        let b = p.allocate("b", "eth0", &[]).unwrap();
        assert_eq!(b.len(), 1);
        let leases = p.leases().unwrap();
        assert_eq!(leases.len(), 1, "only b: {leases:?}");
        assert!(
            d.path().join("testnet/leases.json.lost-at-reboot").is_file(),
            "kept for a look"
        );
        assert!(
            !d.path().join("testnet/leases.json.corrupt").exists(),
            "not quarantined"
        );
    }

    #[test]
    fn a_store_put_aside_is_rebuilt_from_the_endpoint_records() {
        let d = tempfile::tempdir().unwrap();
        let p = pool(d.path(), json!([[{"subnet": "10.0.0.0/24"}]]));
        let a = p.allocate("a", "eth0", &[]).unwrap();
        std::fs::write(d.path().join("testnet/leases.json"), b"{garbage").unwrap();
        p.release("gone", "eth0").unwrap();
        let records = d.path().join("plugin/endpoints/testnet");
        std::fs::create_dir_all(&records).unwrap();
        let rec = json!({"containerId": "a", "ifname": "eth0", "ips": [a[0].address.to_string()], "created": 7});
        std::fs::write(records.join("a:eth0.json"), rec.to_string()).unwrap();
        std::fs::write(records.join("junk.json"), b"{").unwrap();
        let r = crate::rebuild::rebuild(d.path(), "testnet", &d.path().join("plugin")).unwrap();
        assert_eq!((r.leases, r.skipped.len()), (1, 1));
        assert!(r.kept_as.is_some_and(|k| k.exists()), "the corrupt store is kept");
        let b = p.allocate("b", "eth0", &[]).unwrap();
        assert_ne!(b[0].address, a[0].address, "the rebuilt lease is held");
        assert_eq!(
            p.release("a", "eth0").unwrap(),
            vec![a[0].address.ip()],
            "and released by its owner"
        );
    }

    fn eni_pool(dir: &std::path::Path, node: serde_json::Value) -> Pool {
        let file = dir.join("enis.json");
        std::fs::write(&file, node.to_string()).unwrap();
        let cfg: IpamConfig = serde_json::from_value(json!({
            "type": "sluice-ipam", "eniPool": {"backend": "file", "path": file}, "dataDir": dir
        }))
        .unwrap();
        Pool::new("eninet", &cfg).unwrap()
    }

    fn two_enis(a_ips: &[&str], b_ips: &[&str]) -> serde_json::Value {
        json!({"enis": [
            {"name": "eth1", "mac": "02:00:00:00:01:01", "subnet": "172.31.16.0/20", "ips": a_ips},
            {"name": "eth2", "subnet": "172.31.32.0/20", "gateway": "172.31.32.254", "ips": b_ips}
        ]})
    }

    #[test]
    fn eni_pool_spreads_over_enis_and_says_which() {
        let d = tempfile::tempdir().unwrap();
        let p = eni_pool(
            d.path(),
            two_enis(&["172.31.16.10", "172.31.16.11"], &["172.31.32.10", "172.31.32.11"]),
        );
        let mut per_eni = std::collections::HashMap::new();
        for i in 0..4 {
            let a = p.allocate(&format!("c{i}"), "eth0", &[]).unwrap();
            assert_eq!(a.len(), 1);
            let eni = a[0].eni.clone().expect("an ENI pool names the ENI");
            let name = eni.name.clone().unwrap();
            let (prefix, gw) = if name == "eth1" {
                (20, "172.31.16.1")
            } else {
                (20, "172.31.32.254")
            };
            assert_eq!(a[0].address.prefix(), prefix);
            assert_eq!(a[0].gateway.unwrap().to_string(), gw);
            assert!(
                a[0].address
                    .ip()
                    .to_string()
                    .starts_with(if name == "eth1" { "172.31.16." } else { "172.31.32." }),
                "{a:?}"
            );
            *per_eni.entry(name).or_insert(0) += 1;
            assert_eq!(p.allocate(&format!("c{i}"), "eth0", &[]).unwrap(), a, "idempotent");
        }
        assert_eq!(per_eni["eth1"], 2, "least loaded ENI first: {per_eni:?}");
        assert_eq!(per_eni["eth2"], 2);
        let e = p.allocate("c9", "eth0", &[]).unwrap_err();
        assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
        assert!(
            e.to_string().contains("enis.json") && e.to_string().contains("eninet"),
            "{e}"
        );
        assert_eq!(p.free_per_set().unwrap(), vec![0]);
    }

    #[test]
    fn eni_file_changes_while_leases_exist() {
        let d = tempfile::tempdir().unwrap();
        let p = eni_pool(d.path(), two_enis(&["172.31.16.10"], &[]));
        let first = p.allocate("c1", "eth0", &[]).unwrap();
        assert_eq!(first[0].address.ip().to_string(), "172.31.16.10");
        assert!(matches!(
            p.allocate("c2", "eth0", &[]),
            Err(IpamError::Exhausted { .. })
        ));

        // The operator moves .10 away and adds an address on eth2.
        std::fs::write(d.path().join("enis.json"), two_enis(&[], &["172.31.32.20"]).to_string()).unwrap();
        assert_eq!(
            p.allocate("c1", "eth0", &[]).unwrap(),
            first,
            "removed address stays leased"
        );
        let second = p.allocate("c2", "eth0", &[]).unwrap();
        assert_eq!(
            second[0].address.ip().to_string(),
            "172.31.32.20",
            "new address usable at once"
        );
        assert_eq!(second[0].eni.as_ref().unwrap().name.as_deref(), Some("eth2"));
        p.release("c1", "eth0").unwrap();
        let e = p.allocate("c3", "eth0", &[]).unwrap_err();
        assert!(
            matches!(e, IpamError::Exhausted { .. }),
            "a released address no longer in the file is never handed out: {e}"
        );
        assert!(matches!(
            p.allocate("c3", "eth0", &["172.31.16.10".parse().unwrap()]),
            Err(IpamError::NotInRange { .. })
        ));
    }

    #[test]
    fn eni_pool_requested_and_config_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = eni_pool(d.path(), two_enis(&["172.31.16.10", "172.31.16.11"], &["172.31.32.10"]));
        let a = p.allocate("c1", "eth0", &["172.31.32.10".parse().unwrap()]).unwrap();
        assert_eq!(a[0].eni.as_ref().unwrap().name.as_deref(), Some("eth2"));
        assert!(matches!(
            p.allocate("c2", "eth0", &["172.31.32.10".parse().unwrap()]),
            Err(IpamError::Taken { .. })
        ));
        std::fs::write(d.path().join("enis.json"), b"{not json").unwrap();
        let e = p.allocate("c3", "eth0", &[]).unwrap_err().to_string();
        assert!(e.contains("enis.json") && e.contains("not a valid node file"), "{e}");
        std::fs::remove_file(d.path().join("enis.json")).unwrap();
        let e = p.allocate("c3", "eth0", &[]).unwrap_err();
        assert!(matches!(e, IpamError::NodeFile { .. }), "{e}");
        let both: IpamConfig = serde_json::from_value(json!({
            "type": "sluice-ipam", "eniPool": {"backend": "file"}, "subnet": "10.0.0.0/24"
        }))
        .unwrap();
        let Err(e) = Pool::new("n", &both) else {
            panic!("eniPool with a subnet accepted")
        };
        assert!(e.to_string().contains("exclude each other"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Any interleaving of allocations and releases over two ranges of a
        /// set: never a duplicate, never outside [start, end], never the gateway.
        #[test]
        fn never_duplicate_or_reserved(ops in proptest::collection::vec((0u8..40, any::<bool>()), 1..120)) {
            let d = tempfile::tempdir().unwrap();
            let p = pool(d.path(), json!([[
                {"subnet": "10.0.0.0/28", "rangeStart": "10.0.0.4", "rangeEnd": "10.0.0.9", "gateway": "10.0.0.5"},
                {"subnet": "10.0.1.0/29"}
            ]]));
            for (owner, release) in ops {
                let id = format!("c{owner}");
                if release {
                    p.release(&id, "eth0").unwrap();
                } else {
                    match p.allocate(&id, "eth0", &[]) {
                        Ok(_) | Err(IpamError::Exhausted { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                let leases = p.leases().unwrap();
                let mut owners = HashSet::new();
                for (ip, l) in &leases {
                    prop_assert!(owners.insert(l.container_id.clone()), "owner leased twice");
                    let s = ip.to_string();
                    prop_assert!(s != "10.0.0.5" && s != "10.0.1.1" && s != "10.0.1.0" && s != "10.0.1.7", "reserved {s}");
                    let o: Vec<u8> = s.split('.').map(|x| x.parse().unwrap()).collect();
                    prop_assert!((o[2] == 0 && (4..=9).contains(&o[3])) || (o[2] == 1 && (1..=6).contains(&o[3])), "outside {s}");
                }
                prop_assert!(leases.len() <= 5 + 5);
            }
        }

        /// Dual stack with a small IPv6 set: an owner holds both addresses or
        /// none (an exhausted set leaves no half allocation behind), IPv6
        /// addresses stay inside [rangeStart, rangeEnd] and skip the gateway.
        #[test]
        fn dual_stack_is_all_or_nothing(ops in proptest::collection::vec((0u8..24, any::<bool>()), 1..100)) {
            let d = tempfile::tempdir().unwrap();
            let p = pool(d.path(), json!([
                [{"subnet": "10.0.0.0/27"}],
                [{"subnet": "fd00:1::/64", "rangeStart": "fd00:1::10", "rangeEnd": "fd00:1::17", "gateway": "fd00:1::12"}]
            ]));
            let lo: IpAddr = "fd00:1::10".parse().unwrap();
            let hi: IpAddr = "fd00:1::17".parse().unwrap();
            for (owner, release) in ops {
                let id = format!("c{owner}");
                if release {
                    p.release(&id, "eth0").unwrap();
                } else {
                    match p.allocate(&id, "eth0", &[]) {
                        Ok(a) => prop_assert_eq!(a.len(), 2),
                        Err(IpamError::Exhausted { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                let leases = p.leases().unwrap();
                let mut per_owner: std::collections::HashMap<&str, (u8, u8)> = Default::default();
                for (ip, l) in &leases {
                    let e = per_owner.entry(l.container_id.as_str()).or_default();
                    if ip.is_ipv6() {
                        e.1 += 1;
                        prop_assert!(*ip >= lo && *ip <= hi && ip.to_string() != "fd00:1::12", "v6 {ip}");
                    } else {
                        e.0 += 1;
                    }
                }
                for (o, n) in per_owner {
                    prop_assert_eq!(n, (1, 1), "{} holds a partial allocation", o);
                }
            }
        }
    }
}
