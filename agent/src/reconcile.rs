//! Keeping a node's Service maps equal to the translation, by difference.
//!
//! Ids are what makes a rewrite unnecessary: a frontend keeps its
//! reverse-NAT id and a backend (address, port, protocol) its backend id for
//! as long as they exist, and both are read back from the maps when the
//! agent starts, so a restarted agent computes the same entries the maps
//! already hold. The first pass after a start compares every entry with
//! the map (`Maps::upsert_service` writes only those that differ); later
//! passes skip the frontends whose translation did not change.

use crate::services::{Backends, Frontend};
use sluice_tc_datapath::layout::ip;
use sluice_tc_datapath::maps::{Maps, MapsError, ServiceSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// What one pass did to the maps.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    /// Map entries written or removed.
    pub writes: usize,
    /// Frontends written (changed or new) and removed.
    pub changed: usize,
    pub removed: usize,
    /// Frontends in force after the pass.
    pub frontends: usize,
}

/// Ids from 1 up: the lowest free one is handed out, so that ids stay
/// small and a released one is reused.
#[derive(Debug, Default)]
struct Ids {
    /// Every id below `next` not in use.
    free: BTreeSet<u32>,
    next: u32,
}

impl Ids {
    /// The allocator for ids already in use.
    fn with_used(used: impl IntoIterator<Item = u32>) -> Ids {
        let used: BTreeSet<u32> = used.into_iter().collect();
        let next = used.last().map_or(1, |m| m + 1);
        Ids {
            free: (1..next).filter(|i| !used.contains(i)).collect(),
            next,
        }
    }

    fn take(&mut self) -> u32 {
        self.free.pop_first().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }

    fn release(&mut self, id: u32) {
        self.free.insert(id);
    }
}

/// The frontends that use one backend, and those of them that hold it as
/// terminating.
#[derive(Debug, Default, Clone, Copy)]
struct Refs {
    frontends: u32,
    terminating: u32,
}

/// One frontend fewer uses backend `id` (as terminating unless `active`):
/// note what moved and what no frontend uses any more.
fn drop_ref(
    refs: &mut BTreeMap<u32, Refs>,
    (key, id): BackendKey,
    active: bool,
    moved: &mut BTreeSet<u32>,
    released: &mut Vec<BackendKey>,
) {
    let r = refs.entry(id).or_default();
    r.frontends = r.frontends.saturating_sub(1);
    if !active {
        r.terminating = r.terminating.saturating_sub(1);
        moved.insert(id);
    }
    if r.frontends == 0 {
        released.push((key, id));
    }
}

/// A backend's key (address, port, protocol) and its id.
type BackendKey = ((IpAddr, u16, u8), u32);

pub struct ServiceSync {
    rev_nat: BTreeMap<Frontend, u32>,
    rev_nat_ids: Ids,
    backend_ids: BTreeMap<(IpAddr, u16, u8), u32>,
    backend_alloc: Ids,
    /// What the last pass wrote; None = compare with the maps.
    applied: BTreeMap<Frontend, Option<Backends>>,
    /// Backend id -> who uses it (None: count again).
    refs: Option<BTreeMap<u32, Refs>>,
}

impl ServiceSync {
    /// Start from what the maps hold (ids kept, nothing written).
    pub fn from_maps(maps: &Maps) -> Result<ServiceSync, MapsError> {
        let mut s = ServiceSync {
            rev_nat: BTreeMap::new(),
            rev_nat_ids: Ids::default(),
            backend_ids: BTreeMap::new(),
            backend_alloc: Ids::default(),
            applied: BTreeMap::new(),
            refs: None,
        };
        for v in maps.services()? {
            let f = Frontend {
                vip: v.vip,
                port: v.port,
                proto: v.proto,
            };
            s.rev_nat.insert(f, v.rev_nat_id);
            s.applied.insert(f, None);
        }
        for (id, b) in maps.backends()? {
            s.backend_ids.insert((ip(&b.addr), u16::from_be(b.port), b.proto), id);
        }
        s.rev_nat_ids = Ids::with_used(s.rev_nat.values().copied());
        s.backend_alloc = Ids::with_used(s.backend_ids.values().copied());
        Ok(s)
    }

    /// Backends in the maps after the last pass.
    pub fn backends(&self) -> usize {
        self.backend_ids.len()
    }

    fn rev_nat_id(&mut self, f: Frontend) -> u32 {
        if let Some(id) = self.rev_nat.get(&f) {
            return *id;
        }
        let id = self.rev_nat_ids.take();
        self.rev_nat.insert(f, id);
        id
    }

    fn backend_id(&mut self, k: (IpAddr, u16, u8)) -> u32 {
        if let Some(id) = self.backend_ids.get(&k) {
            return *id;
        }
        let id = self.backend_alloc.take();
        self.backend_ids.insert(k, id);
        id
    }

    /// The backends (key, id, active) of what frontend `f` had written.
    fn ids_of(&self, f: &Frontend, b: &Backends) -> Vec<(BackendKey, bool)> {
        b.backends
            .iter()
            .filter_map(|(addr, port, active)| {
                let k = (*addr, *port, f.proto);
                Some(((k, *self.backend_ids.get(&k)?), *active))
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
        let mut st = SyncStats {
            frontends: want.len(),
            ..Default::default()
        };
        let recount = self.refs.is_none();
        let mut refs = self.refs.take().unwrap_or_default();
        // Backends whose terminating count moved in this pass.
        let mut moved = BTreeSet::new();
        // Backends whose count fell to zero in this pass (one may be taken
        // again by a later frontend of the same pass).
        let mut released = Vec::new();
        // Count first, write after: a frontend's backend entries say what
        // every frontend sharing them says.
        let mut present = 0;
        let mut writes = Vec::new();
        for (f, b) in want {
            let old = self.applied.get(f);
            present += usize::from(old.is_some());
            let unchanged = matches!(old, Some(Some(o)) if o == b);
            if unchanged && !recount {
                continue;
            }
            let rev_nat_id = self.rev_nat_id(*f);
            let mut backends = Vec::with_capacity(b.backends.len());
            for (addr, port, active) in &b.backends {
                let id = self.backend_id((*addr, *port, f.proto));
                let r = refs.entry(id).or_default();
                r.frontends += 1;
                if !active {
                    r.terminating += 1;
                    moved.insert(id);
                }
                backends.push((id, *addr, *port, *active));
            }
            if !recount && let Some(Some(o)) = self.applied.get(f) {
                for (k, active) in self.ids_of(f, o) {
                    drop_ref(&mut refs, k, active, &mut moved, &mut released);
                }
            }
            if !unchanged {
                writes.push((*f, rev_nat_id, backends, b));
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
                    for (k, active) in self.ids_of(f, o) {
                        drop_ref(&mut refs, k, active, &mut moved, &mut released);
                    }
                }
            }
        }
        let draining = |id: &u32| refs.get(id).is_some_and(|r| r.terminating > 0);
        let mut rewritten = BTreeSet::new();
        for (f, rev_nat_id, backends, b) in writes {
            let spec = ServiceSpec {
                vip: f.vip,
                port: f.port,
                proto: f.proto,
                rev_nat_id,
                algorithm: b.algorithm,
                affinity_timeout_secs: b.affinity_timeout_secs,
                reject: b.reject,
                draining: backends.iter().filter(|x| x.3 && draining(&x.0)).map(|x| x.0).collect(),
                backends,
            };
            rewritten.extend(spec.backends.iter().map(|x| x.0));
            let w = maps.upsert_service(&spec)?;
            if w > 0 {
                st.changed += 1;
                st.writes += w;
            }
            self.applied.insert(f, Some(b.clone()));
        }
        // Shared backends whose state may have turned with another
        // frontend's change (written only where it did).
        let turned: Vec<u32> = if recount {
            // What the maps say is not known: every backend not just written.
            refs.keys().copied().collect()
        } else {
            moved.iter().copied().collect()
        };
        for id in turned {
            if let Some(r) = refs.get(&id)
                && r.frontends > 0
                && !rewritten.contains(&id)
            {
                st.writes += maps.set_backend_state(id, r.terminating == 0)?;
            }
        }
        let vips: BTreeSet<IpAddr> = if gone.is_empty() {
            BTreeSet::new()
        } else {
            want.keys().map(|f| f.vip).collect()
        };
        for f in gone {
            let last_of_vip = !vips.contains(&f.vip);
            let w = maps.remove_frontend(f.vip, f.port, f.proto, last_of_vip)?;
            if w > 0 {
                st.removed += 1;
                st.writes += w;
            }
            self.applied.remove(&f);
            if let Some(id) = self.rev_nat.remove(&f) {
                self.rev_nat_ids.release(id);
            }
        }
        let stale: BTreeSet<BackendKey> = if recount {
            self.backend_ids
                .iter()
                .filter(|(_, id)| !refs.contains_key(id))
                .map(|(k, id)| (*k, *id))
                .collect()
        } else {
            released
                .into_iter()
                .filter(|(_, id)| refs.get(id).is_some_and(|r| r.frontends == 0))
                .collect()
        };
        for (k, id) in stale {
            if maps.remove_backend(id)? {
                st.writes += 1;
            }
            self.backend_ids.remove(&k);
            self.backend_alloc.release(id);
            refs.remove(&id);
        }
        self.refs = Some(refs);
        Ok(st)
    }
}
