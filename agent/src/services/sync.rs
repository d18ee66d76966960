//! Keeping a node's Service maps equal to the translation, by difference.
//!
//! Ids are what makes a rewrite unnecessary: a frontend keeps its
//! reverse-NAT id and a backend (address, port, protocol) its backend id for
//! as long as they exist, and both are read back from the maps when the
//! agent starts, so a restarted agent computes the same entries the maps
//! already hold. The first pass after a start compares every entry with
//! the map (`LbMaps::upsert_service` writes only those that differ); later
//! passes skip the frontends whose translation did not change.

use super::translate::{Backends, Frontend};
use sluice_tc_datapath::ids::IdAllocator;
use sluice_tc_datapath::layout::{SVC_SCOPE_CLUSTER, SVC_SCOPE_EXTERNAL, ip};
use sluice_tc_datapath::maps::lb::{Algorithm, Backend, LbMaps, ServiceSpec};
use sluice_tc_datapath::maps::{Maps, MapsError, UplinkMaps};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// What one pass did to the maps.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncStats {
    /// Map entries written or removed.
    pub writes: usize,
    /// Frontends written (changed or new) and removed.
    pub changed: usize,
    pub removed: usize,
    /// Frontends in force after the pass.
    pub frontends: usize,
    /// Conntrack entries of removed backends marked or removed.
    pub flows_forgotten: usize,
    /// What could not be written, one line each (the object and why); the
    /// rest of the pass went on, and the next pass tries again.
    pub failures: Vec<String>,
    /// What was written otherwise than asked, and why.
    pub warnings: Vec<String>,
}

/// What a backend entry stands for: address, target port, protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct BackendKey {
    addr: IpAddr,
    port: u16,
    proto: u8,
}

/// The frontends that use one backend, and those of them that hold it as
/// terminating.
#[derive(Debug, Default, Clone, Copy)]
struct Refs {
    frontends: u32,
    terminating: u32,
}

/// The use counts of the backends, and what moved in one pass.
#[derive(Debug, Default)]
struct Counts {
    refs: BTreeMap<u32, Refs>,
    /// Backends whose terminating count moved in this pass.
    moved: BTreeSet<u32>,
    /// Backends whose count fell to zero in this pass (one may be taken
    /// again by a later frontend of the same pass).
    released: Vec<(BackendKey, u32)>,
}

impl Counts {
    fn take(&mut self, id: u32, active: bool) {
        let r = self.refs.entry(id).or_default();
        r.frontends += 1;
        if !active {
            r.terminating += 1;
            self.moved.insert(id);
        }
    }

    /// One frontend fewer uses backend `id` (as terminating unless `active`).
    fn drop(&mut self, key: BackendKey, id: u32, active: bool) {
        let r = self.refs.entry(id).or_default();
        r.frontends = r.frontends.saturating_sub(1);
        if !active {
            r.terminating = r.terminating.saturating_sub(1);
            self.moved.insert(id);
        }
        if r.frontends == 0 {
            self.released.push((key, id));
        }
    }

    fn draining(&self, id: u32) -> bool {
        self.refs.get(&id).is_some_and(|r| r.terminating > 0)
    }
}

/// One frontend to write in a pass.
struct Write<'a> {
    frontend: Frontend,
    rev_nat_id: u32,
    backends: Vec<Backend>,
    want: &'a Backends,
}

pub struct ServiceSync {
    /// Frontends whose Maglev table is in the maps (the map holds a fixed
    /// number of tables: one that does not fit falls back to random).
    maglev: BTreeSet<Frontend>,
    rev_nat: IdAllocator<Frontend>,
    backend_ids: IdAllocator<BackendKey>,
    /// What the last pass wrote; None = compare with the maps.
    applied: BTreeMap<Frontend, Option<Backends>>,
    /// Backend id -> who uses it (None: count again).
    refs: Option<BTreeMap<u32, Refs>>,
    /// No conntrack entry names a backend id the maps do not hold.
    flows_clean: bool,
    /// The source ranges in the maps: (frontend's reverse-NAT id, prefix).
    sources: BTreeSet<(u32, IpAddr, u8)>,
}

impl ServiceSync {
    /// Start from what the maps hold (ids kept, nothing written).
    pub fn from_maps(maps: &Maps) -> Result<ServiceSync, MapsError> {
        let lb = maps.lb();
        let services = lb.services()?;
        let frontends: Vec<(Frontend, u32)> = services
            .iter()
            .map(|v| {
                let f = Frontend {
                    vip: v.vip,
                    port: v.port,
                    proto: v.proto,
                    external: v.scope == SVC_SCOPE_EXTERNAL,
                };
                (f, v.rev_nat_id)
            })
            .collect();
        let backends = lb.backends()?.into_iter().map(|b| {
            let k = BackendKey {
                addr: b.addr,
                port: b.port,
                proto: b.proto,
            };
            (k, b.id)
        });
        let maglev = services
            .iter()
            .filter(|v| v.algorithm == Algorithm::Maglev)
            .map(|v| Frontend {
                vip: v.vip,
                port: v.port,
                proto: v.proto,
                external: v.scope == SVC_SCOPE_EXTERNAL,
            })
            .collect();
        let sources = maps
            .uplink()
            .sources()?
            .into_iter()
            .map(|(id, a, bits)| {
                let a = ip(&a);
                let bits = if a.is_ipv4() { bits.saturating_sub(96) } else { bits };
                (id, a, bits as u8)
            })
            .collect();
        Ok(ServiceSync {
            sources,
            maglev,
            applied: frontends.iter().map(|(f, _)| (*f, None)).collect(),
            rev_nat: IdAllocator::with_held(1, frontends),
            backend_ids: IdAllocator::with_held(1, backends),
            refs: None,
            flows_clean: false,
        })
    }

    /// Backends in the maps after the last pass.
    pub fn backends(&self) -> usize {
        self.backend_ids.len()
    }

    /// The backends (key, id, active) of what frontend `f` had written.
    fn written(&self, f: &Frontend, b: &Backends) -> Vec<(BackendKey, u32, bool)> {
        b.backends
            .iter()
            .filter_map(|x| {
                let k = BackendKey {
                    addr: x.addr,
                    port: x.port,
                    proto: f.proto,
                };
                Some((k, self.backend_ids.get(&k)?, x.active))
            })
            .collect()
    }

    /// Make the maps hold `want`: write the frontends that changed, remove
    /// those that went, then the backends no frontend uses.
    ///
    /// Per backend, the frontends that use it and those that hold it as
    /// terminating are counted, and the counts kept up to date frontend by
    /// frontend, so that a pass in which one Service changed costs a look
    /// at each frontend and the work of that one. They are counted from
    /// scratch on the first pass (the maps' entries were not written by
    /// this process) and after a pass that failed. A backend entry shared
    /// by frontends that disagree says terminating (`ServiceSpec::draining`).
    pub fn apply(&mut self, maps: &mut Maps, want: &BTreeMap<Frontend, Backends>) -> Result<SyncStats, MapsError> {
        let lb = maps.lb_mut();
        let mut st = SyncStats {
            frontends: want.len(),
            ..Default::default()
        };
        let recount = self.refs.is_none();
        let mut counts = Counts {
            refs: self.refs.take().unwrap_or_default(),
            ..Default::default()
        };
        // Count first, write after: a frontend's backend entries say what
        // every frontend sharing them says.
        let (writes, gone) = self.count(want, recount, &mut counts);
        let rewritten = self.write(lb, writes, &counts, &mut st);
        self.fix_shared_states(lb, &counts, recount, &rewritten, &mut st);
        self.remove_frontends(lb, want, gone, &mut st);
        let gone = self.remove_backends(lb, recount, &mut counts, &mut st);
        self.sync_sources(maps.uplink_mut(), want, &mut st);
        // Their flows: a TCP connection is reset at its next segment, a UDP
        // flow's next datagram picks a live backend, and no entry keeps an
        // id that may be given out again.
        // After a start (or a failure here) the backends removed before
        // are not known: every id no backend holds is forgotten.
        let forgotten = if self.flows_clean {
            maps.ct_mut().forget_backends(&gone)
        } else {
            let live = self.backend_ids.iter().map(|(_, id)| id).collect();
            maps.ct_mut().forget_backends_except(&live)
        };
        match forgotten {
            Ok(f) => {
                self.flows_clean = true;
                st.writes += f.marked + f.removed;
                st.flows_forgotten = f.marked + f.removed;
            }
            Err(e) => {
                self.flows_clean = false;
                st.failures
                    .push(format!("forgetting the flows of removed backends {gone:?}: {e}"));
            }
        }
        // After a failure what the maps hold is not known: the next pass
        // counts again and compares every entry.
        if st.failures.is_empty() {
            self.refs = Some(counts.refs);
        }
        Ok(st)
    }

    /// Count every frontend's backends, and list the frontends to write
    /// and those gone.
    fn count<'a>(
        &mut self,
        want: &'a BTreeMap<Frontend, Backends>,
        recount: bool,
        counts: &mut Counts,
    ) -> (Vec<Write<'a>>, Vec<Frontend>) {
        let mut present = 0;
        let mut writes = Vec::new();
        for (f, b) in want {
            let old = self.applied.get(f);
            present += usize::from(old.is_some());
            let unchanged = matches!(old, Some(Some(o)) if o == b);
            if unchanged && !recount {
                continue;
            }
            let rev_nat_id = self.rev_nat.id(f);
            let mut backends = Vec::with_capacity(b.backends.len());
            for x in &b.backends {
                let k = BackendKey {
                    addr: x.addr,
                    port: x.port,
                    proto: f.proto,
                };
                let id = self.backend_ids.id(&k);
                counts.take(id, x.active);
                backends.push(Backend {
                    id,
                    addr: x.addr,
                    port: x.port,
                    active: x.active,
                });
            }
            if !recount && let Some(Some(o)) = self.applied.get(f) {
                for (k, id, active) in self.written(f, o) {
                    counts.drop(k, id, active);
                }
            }
            if !unchanged {
                writes.push(Write {
                    frontend: *f,
                    rev_nat_id,
                    backends,
                    want: b,
                });
            }
        }
        let gone: Vec<Frontend> = if present < self.applied.len() {
            self.applied.keys().filter(|f| !want.contains_key(f)).copied().collect()
        } else {
            Vec::new()
        };
        if !recount {
            for f in &gone {
                if let Some(Some(o)) = self.applied.get(f) {
                    for (k, id, active) in self.written(f, o) {
                        counts.drop(k, id, active);
                    }
                }
            }
        }
        (writes, gone)
    }

    /// Write the frontends that changed; returns the backends written. A
    /// frontend that fails is reported and left for the next pass.
    fn write(&mut self, lb: &mut LbMaps, writes: Vec<Write<'_>>, counts: &Counts, st: &mut SyncStats) -> BTreeSet<u32> {
        let mut rewritten = BTreeSet::new();
        for w in writes {
            let f = w.frontend;
            let algorithm = self.algorithm(lb, f, w.want, st);
            let spec = ServiceSpec {
                vip: f.vip,
                port: f.port,
                proto: f.proto,
                rev_nat_id: w.rev_nat_id,
                algorithm,
                affinity_timeout_secs: w.want.affinity_timeout_secs,
                reject: w.want.reject,
                node_address: w.want.node_address,
                scope: if f.external {
                    SVC_SCOPE_EXTERNAL
                } else {
                    SVC_SCOPE_CLUSTER
                },
                source_ranges: !w.want.source_ranges.is_empty(),
                node_denied: w.want.node_denied,
                draining: w
                    .backends
                    .iter()
                    .filter(|b| b.active && counts.draining(b.id))
                    .map(|b| b.id)
                    .collect(),
                backends: w.backends,
            };
            rewritten.extend(spec.backends.iter().map(|b| b.id));
            match lb.upsert_service(&spec) {
                Ok(n) => {
                    if n > 0 {
                        st.changed += 1;
                        st.writes += n;
                    }
                    if algorithm == Algorithm::Maglev {
                        self.maglev.insert(f);
                    } else {
                        self.maglev.remove(&f);
                    }
                    self.applied.insert(f, Some(w.want.clone()));
                }
                Err(e) => {
                    st.failures.push(format!("{f} ({}): {e}", w.want.service));
                    self.applied.insert(f, None);
                }
            }
        }
        rewritten
    }

    /// Make the source-range trie hold every frontend's ranges (a
    /// load-balancer IP's, from outside and from the pods), by difference.
    fn sync_sources(&mut self, uplink: &mut UplinkMaps, want: &BTreeMap<Frontend, Backends>, st: &mut SyncStats) {
        let mut wanted = BTreeSet::new();
        for (f, b) in want.iter().filter(|(_, b)| !b.source_ranges.is_empty()) {
            if let Some(id) = self.rev_nat.get(f) {
                wanted.extend(b.source_ranges.iter().map(|(a, bits)| (id, *a, *bits)));
            }
        }
        for &(id, a, bits) in wanted.difference(&self.sources) {
            match uplink.add_source(id, a, bits) {
                Ok(()) => st.writes += 1,
                Err(e) => st
                    .failures
                    .push(format!("source range {a}/{bits} of frontend {id}: {e}")),
            }
        }
        for &(id, a, bits) in self.sources.difference(&wanted) {
            match uplink.remove_source(id, a, bits) {
                Ok(()) => st.writes += 1,
                Err(e) => st
                    .failures
                    .push(format!("removing source range {a}/{bits} of frontend {id}: {e}")),
            }
        }
        // Only what was written counts as there: a failed write is tried
        // again next pass.
        if st.failures.is_empty() {
            self.sources = wanted;
        }
    }

    /// The selection a frontend gets: Maglev only while the map has room
    /// for its table.
    fn algorithm(&self, lb: &LbMaps, f: Frontend, want: &Backends, st: &mut SyncStats) -> Algorithm {
        if want.algorithm != Algorithm::Maglev || self.maglev.contains(&f) || self.maglev.len() < lb.maglev_capacity() {
            return want.algorithm;
        }
        st.warnings.push(format!(
            "{f} ({}): the Maglev map holds {} tables, all in use; this frontend selects at random",
            want.service,
            lb.maglev_capacity()
        ));
        Algorithm::Random
    }

    /// Shared backends whose state may have turned with another frontend's
    /// change (written only where it did).
    fn fix_shared_states(
        &self,
        lb: &mut LbMaps,
        counts: &Counts,
        recount: bool,
        rewritten: &BTreeSet<u32>,
        st: &mut SyncStats,
    ) {
        let turned: Vec<u32> = if recount {
            // What the maps say is not known: every backend not just written.
            counts.refs.keys().copied().collect()
        } else {
            counts.moved.iter().copied().collect()
        };
        for id in turned {
            if let Some(r) = counts.refs.get(&id)
                && r.frontends > 0
                && !rewritten.contains(&id)
            {
                match lb.set_backend_state(id, r.terminating == 0) {
                    Ok(n) => st.writes += n,
                    Err(e) => st.failures.push(format!("backend {id}: {e}")),
                }
            }
        }
    }

    fn remove_frontends(
        &mut self,
        lb: &mut LbMaps,
        want: &BTreeMap<Frontend, Backends>,
        gone: Vec<Frontend>,
        st: &mut SyncStats,
    ) {
        let vips: BTreeSet<IpAddr> = if gone.is_empty() {
            BTreeSet::new()
        } else {
            want.keys().filter(|f| !f.external).map(|f| f.vip).collect()
        };
        for f in gone {
            let last_of_vip = !vips.contains(&f.vip);
            let scope = if f.external {
                SVC_SCOPE_EXTERNAL
            } else {
                SVC_SCOPE_CLUSTER
            };
            match lb.remove_scoped(f.vip, f.port, f.proto, scope, last_of_vip) {
                Ok(n) => {
                    if n > 0 {
                        st.removed += 1;
                        st.writes += n;
                    }
                    self.applied.remove(&f);
                    self.maglev.remove(&f);
                    self.rev_nat.release(&f);
                }
                Err(e) => st.failures.push(format!("removing {f}: {e}")),
            }
        }
    }

    /// Remove the backends no frontend uses; returns their ids.
    fn remove_backends(
        &mut self,
        lb: &mut LbMaps,
        recount: bool,
        counts: &mut Counts,
        st: &mut SyncStats,
    ) -> BTreeSet<u32> {
        let mut gone = BTreeSet::new();
        let stale: BTreeSet<(BackendKey, u32)> = if recount {
            self.backend_ids
                .iter()
                .filter(|(_, id)| !counts.refs.contains_key(id))
                .map(|(k, id)| (*k, id))
                .collect()
        } else {
            counts
                .released
                .iter()
                .filter(|(_, id)| counts.refs.get(id).is_some_and(|r| r.frontends == 0))
                .copied()
                .collect()
        };
        for (k, id) in stale {
            match lb.remove_backend(id) {
                Ok(there) => {
                    st.writes += usize::from(there);
                    self.backend_ids.release(&k);
                    counts.refs.remove(&id);
                    gone.insert(id);
                }
                Err(e) => st.failures.push(format!("removing backend {id}: {e}")),
            }
        }
        gone
    }
}
