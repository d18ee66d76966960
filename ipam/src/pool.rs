//! A pool: the validated range sets of one network plus its lease store.

use crate::config::{DEFAULT_DATA_DIR, IpamConfig};
use crate::error::IpamError;
use crate::range::Range;
use crate::store::{Lease, LockedStore, PoolState, now_secs};
use ipnetwork::IpNetwork;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One address handed out, with what the pod needs to configure it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The address with the subnet's prefix length.
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
}

pub struct Pool {
    name: String,
    sets: Vec<Vec<Range>>,
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
        let sets = cfg.range_sets()?;
        let dir = cfg
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
            .join(network);
        Ok(Pool {
            name: network.to_string(),
            sets,
            dir,
            lock_timeout: Duration::from_millis(cfg.lock_timeout_ms.unwrap_or(10_000)),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self, exclusive: bool) -> Result<LockedStore, IpamError> {
        LockedStore::lock(&self.dir, &self.name, self.lock_timeout, exclusive)
    }

    fn describe_ranges(&self) -> String {
        self.sets
            .iter()
            .flatten()
            .map(Range::describe)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One address from each range set for (container id, ifname). Calling it
    /// again for the same owner returns the same addresses.
    pub fn allocate(
        &self,
        container_id: &str,
        ifname: &str,
        requested: &[IpAddr],
    ) -> Result<Vec<Allocation>, IpamError> {
        // Refuse a requested address outside every range before taking the lock.
        for ip in requested {
            if !self.sets.iter().flatten().any(|r| r.is_allocatable(*ip)) {
                return Err(IpamError::NotInRange {
                    pool: self.name.clone(),
                    ip: ip.to_string(),
                    ranges: self.describe_ranges(),
                });
            }
        }
        let store = self.lock(true)?;
        let mut state = store.load()?;
        let mut out = Vec::with_capacity(self.sets.len());
        let mut changed = false;
        for (idx, set) in self.sets.iter().enumerate() {
            let (ip, range, new) = self.allocate_in_set(&mut state, idx, set, container_id, ifname, requested)?;
            changed |= new;
            out.push(Allocation {
                address: IpNetwork::new(ip, range.subnet.prefix()).expect("prefix from a valid subnet"),
                gateway: range.gateway,
            });
        }
        if changed {
            store.save(&state)?;
        }
        Ok(out)
    }

    fn allocate_in_set<'a>(
        &self,
        state: &mut PoolState,
        idx: usize,
        set: &'a [Range],
        container_id: &str,
        ifname: &str,
        requested: &[IpAddr],
    ) -> Result<(IpAddr, &'a Range, bool), IpamError> {
        let range_of = |ip: IpAddr| set.iter().find(|r| r.contains(ip));
        // Idempotent: an existing lease of this owner in this set wins.
        if let Some((ip, _)) = state
            .leases
            .iter()
            .find(|(ip, l)| l.container_id == container_id && l.ifname == ifname && range_of(**ip).is_some())
        {
            return Ok((*ip, range_of(*ip).expect("checked"), false));
        }
        let lease = Lease {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            since: now_secs(),
        };
        if let Some(ip) = requested
            .iter()
            .copied()
            .find(|ip| set.iter().any(|r| r.is_allocatable(*ip)))
        {
            if let Some(owner) = state.leases.get(&ip) {
                return Err(IpamError::Taken {
                    pool: self.name.clone(),
                    ip: ip.to_string(),
                    owner: format!("{}/{}", owner.container_id, owner.ifname),
                });
            }
            state.leases.insert(ip, lease);
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
        let last = state
            .last_reserved
            .get(&idx)
            .and_then(|l| set.iter().position(|r| r.contains(*l)).map(|i| (i, *l)));
        let (mut ri, mut ip) = match last {
            Some((i, l)) => step(i, l),
            None => (0, set[0].first()),
        };
        // Each range is at most its size plus the gateway: one lap visits every address.
        let lap: u128 = set.iter().map(|r| r.size() + 1).sum();
        for _ in 0..lap {
            if set[ri].is_allocatable(ip) && !state.leases.contains_key(&ip) {
                state.leases.insert(ip, lease);
                state.last_reserved.insert(idx, ip);
                return Ok((ip, &set[ri], true));
            }
            (ri, ip) = step(ri, ip);
        }
        Err(IpamError::Exhausted {
            pool: self.name.clone(),
            range: set.iter().map(Range::describe).collect::<Vec<_>>().join(", "),
        })
    }

    /// Release every address of (container id, ifname). Idempotent.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        self.release_where(|l| l.container_id == container_id && l.ifname == ifname)
    }

    /// Release every lease whose owner is not in `valid` (CNI GC).
    pub fn gc(&self, valid: &[(String, String)]) -> Result<Vec<IpAddr>, IpamError> {
        self.release_where(|l| !valid.iter().any(|(c, i)| *c == l.container_id && *i == l.ifname))
    }

    fn release_where(&self, doomed: impl Fn(&Lease) -> bool) -> Result<Vec<IpAddr>, IpamError> {
        let store = self.lock(true)?;
        let mut state = store.load()?;
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

    /// Free addresses per range set, for STATUS.
    pub fn free_per_set(&self) -> Result<Vec<u128>, IpamError> {
        let leases = self.leases()?;
        Ok(self
            .sets
            .iter()
            .map(|set| {
                let size: u128 = set.iter().map(Range::size).sum();
                let used = leases
                    .iter()
                    .filter(|(ip, _)| set.iter().any(|r| r.is_allocatable(*ip)))
                    .count() as u128;
                size.saturating_sub(used)
            })
            .collect())
    }
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
    }
}
