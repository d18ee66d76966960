//! Writing `Desired` into one node's maps, as a difference from what is
//! there: an update touches only the entries that change, so applying a
//! policy change costs per changed rule, not per rule.
//!
//! Order, so that no packet sees a state that is neither the old nor the
//! new one in a way that matters: identities and CIDRs first (rules may
//! name them), then new rules, then the endpoints' isolation (a pod becomes
//! isolated only once its rules are in), then stale rules, endpoints and
//! identities go. Established connections keep their verdict (their
//! conntrack entries), as documented in docs/policy.md.

use crate::translate::Desired;
use ipnetwork::IpNetwork;
use sluice_tc_datapath::layout::{
    EpPolicyValue, ID_HOST, NAME_IDENTITY, NAME_POLICY, NameValue, POLICY_F_EGRESS, POLICY_F_INGRESS, POLICY_F_PENDING,
    PolicyMatch,
};
use sluice_tc_datapath::maps::policy::RuleEntry;
use sluice_tc_datapath::maps::{Maps, MapsError};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// What the maps hold, as far as policy goes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct State {
    names: BTreeMap<(u32, u32), String>,
    cidrs: BTreeMap<IpNetwork, u32>,
    endpoints: BTreeMap<u32, EpPolicyValue>,
    /// Rule entries: (match, prefix length) -> the policy allowing it.
    rules: BTreeMap<(PolicyMatch, u32), u32>,
}

/// A rule entry from its key in `State::rules`.
fn rule_entry(&(rule, prefix_len): &(PolicyMatch, u32), policy: u32) -> RuleEntry {
    RuleEntry {
        rule,
        prefix_len,
        policy,
    }
}

/// How many entries one `apply` wrote and removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStats {
    pub written: usize,
    pub removed: usize,
    /// Pods of this node some policy selects.
    pub endpoints: usize,
    /// Pods held since their ADD whose hold this apply replaced.
    pub released: usize,
    /// Pods still held: the agent does not know them yet.
    pub held: usize,
    /// Flows of released pods dropped with their hold.
    pub hold_flows: usize,
    /// Identity and policy names that did not fit the names map.
    pub unnamed: usize,
}

/// Keeps one node's maps in step with `Desired`.
pub struct NodeApplier {
    applied: State,
    /// The ipcache as the maps hold it (the cluster's pods: kept apart
    /// from `applied`, compared by the addresses a pass says moved).
    ipcache: BTreeMap<IpAddr, u32>,
    /// The translation pass whose ipcache the maps hold, exactly (None:
    /// not known, or an apply failed half-way): the next pass's changes
    /// from it are all the ipcache entries to look at.
    ipcache_pass: Option<u64>,
    /// The node's own addresses as applied (identity `host`).
    hosts: BTreeSet<IpAddr>,
}

impl NodeApplier {
    /// Starts from what the maps hold now (after an agent restart, a
    /// previous run's entries are compared against, not duplicated).
    pub fn from_maps(maps: &Maps) -> Result<NodeApplier, MapsError> {
        let mut s = State::default();
        let policy = maps.policy();
        let ipcache = policy.identities()?.into_iter().map(|e| (e.addr, e.identity)).collect();
        for c in policy.cidrs()? {
            if let Ok(n) = IpNetwork::new(c.net, c.prefix) {
                s.cidrs.insert(n, c.identity);
            }
        }
        for e in policy.endpoint_policies()? {
            s.endpoints.insert(e.endpoint_id, e.state);
        }
        for e in policy.rule_entries(None)? {
            s.rules.insert((e.rule, e.prefix_len), e.policy);
        }
        for n in maps.observe().names()? {
            s.names.insert((n.kind, n.id), n.name);
        }
        Ok(NodeApplier {
            applied: s,
            ipcache,
            ipcache_pass: None,
            hosts: BTreeSet::new(),
        })
    }

    /// Apply `d` to this node: `host` are the node's own addresses (they
    /// may always reach its pods).
    pub fn apply(&mut self, maps: &mut Maps, d: &Desired, host: &[IpAddr]) -> Result<ApplyStats, MapsError> {
        self.apply_releasing(maps, d, host, &BTreeSet::new())
    }

    /// `apply`, releasing the holds of `known`: endpoints held at ADD whose
    /// Pod object the caller has matched to them (by the name in their CNI
    /// record: not by address, which another pod's stale object may still
    /// claim).
    pub fn apply_releasing(
        &mut self,
        maps: &mut Maps,
        d: &Desired,
        host: &[IpAddr],
        known: &BTreeSet<u32>,
    ) -> Result<ApplyStats, MapsError> {
        // One new policy generation for the whole change (and one more per
        // released hold), stored on every path out.
        maps.policy_mut().defer_generation();
        let r = self.write(maps, d, host, known);
        let stored = maps.policy_mut().end_deferral();
        let st = r?;
        stored?;
        Ok(st)
    }

    fn write(
        &mut self,
        maps: &mut Maps,
        d: &Desired,
        host: &[IpAddr],
        known: &BTreeSet<u32>,
    ) -> Result<ApplyStats, MapsError> {
        let (want, local) = self.wanted(maps, d)?;
        let host: BTreeSet<IpAddr> = host.iter().copied().collect();
        let (ip_set, ip_removed) = self.ipcache_diff(d, &host);
        self.ipcache_pass = None;
        // Read before anything is written over them.
        let held: Vec<u32> = maps
            .policy()
            .endpoint_policies()?
            .into_iter()
            .filter(|e| e.state.flags & POLICY_F_PENDING != 0)
            .map(|e| e.endpoint_id)
            .collect();
        let have = &self.applied;
        let mut st = ApplyStats {
            endpoints: want.endpoints.len(),
            ..Default::default()
        };
        // Names are for the tools (drop events, sluicectl): a full names map
        // costs names, never enforcement. What did not fit is counted and
        // tried again at the next apply.
        let mut unnamed = Vec::new();
        for (k, v) in &want.names {
            if have.names.get(k) != Some(v) {
                match maps.observe_mut().set_name(k.0, k.1, v) {
                    Ok(()) => st.written += 1,
                    Err(_) => unnamed.push(*k),
                }
            }
        }
        st.unnamed = unnamed.len();
        for (ip, id) in ip_set {
            maps.policy_mut().set_identity(ip, id)?;
            self.ipcache.insert(ip, id);
            st.written += 1;
        }
        for (n, id) in &want.cidrs {
            if have.cidrs.get(n) != Some(id) {
                maps.policy_mut().set_cidr(n.network(), n.prefix(), *id)?;
                st.written += 1;
            }
        }
        for (k, policy) in &want.rules {
            if have.rules.get(k) != Some(policy) {
                maps.policy_mut().set_rule_entry(&rule_entry(k, *policy))?;
                st.written += 1;
            }
        }
        for (ep, v) in &want.endpoints {
            if have.endpoints.get(ep) != Some(v) {
                maps.policy_mut().set_endpoint_policy(*ep, *v)?;
                st.written += 1;
            }
        }
        // Right after the pods' new entries: a flow opened on hold passes
        // on its conntrack entry only until here.
        self.release_holds(maps, &held, known, &want, &local, &mut st)?;
        for ep in have.endpoints.keys().filter(|e| !want.endpoints.contains_key(e)) {
            maps.policy_mut().remove_endpoint_policy(*ep)?;
            st.removed += 1;
        }
        for (k, policy) in have.rules.iter().filter(|(k, _)| !want.rules.contains_key(k)) {
            maps.policy_mut().remove_rule_entry(&rule_entry(k, *policy))?;
            st.removed += 1;
        }
        for n in have.cidrs.keys().filter(|n| !want.cidrs.contains_key(n)) {
            maps.policy_mut().remove_cidr(n.network(), n.prefix())?;
            st.removed += 1;
        }
        for ip in ip_removed {
            maps.policy_mut().remove_identity(ip)?;
            self.ipcache.remove(&ip);
            st.removed += 1;
        }
        for k in have.names.keys().filter(|k| !want.names.contains_key(k)) {
            maps.observe_mut().remove_name(k.0, k.1)?;
            st.removed += 1;
        }
        let mut want = want;
        for k in &unnamed {
            want.names.remove(k);
        }
        self.applied = want;
        self.ipcache_pass = Some(d.pass);
        self.hosts = host;
        Ok(st)
    }

    /// The ipcache entries to write and to remove: the addresses `d` says
    /// moved since the pass the maps hold, and the node's own where they
    /// changed; every address when that is not known. The node's own
    /// addresses are `host` whatever a pod object claims.
    fn ipcache_diff(&self, d: &Desired, host: &BTreeSet<IpAddr>) -> (Vec<(IpAddr, u32)>, Vec<IpAddr>) {
        let candidates: BTreeSet<IpAddr> = match &d.ipcache_changes {
            Some((since, moved)) if Some(*since) == self.ipcache_pass => moved
                .iter()
                .chain(host.symmetric_difference(&self.hosts))
                .copied()
                .collect(),
            _ => d
                .ipcache
                .keys()
                .chain(host)
                .chain(self.ipcache.keys())
                .copied()
                .collect(),
        };
        let (mut set, mut removed) = (Vec::new(), Vec::new());
        for ip in candidates {
            let want = if host.contains(&ip) {
                Some(ID_HOST)
            } else {
                d.ipcache.get(&ip).copied()
            };
            if want == self.ipcache.get(&ip).copied() {
                continue;
            }
            match want {
                Some(id) => set.push((ip, id)),
                None => removed.push(ip),
            }
        }
        (set, removed)
    }

    /// Pods the CNI plugin held at ADD (policy_hold.rs in the plugin) that
    /// are `known` now: their hold becomes their policy, or goes when none
    /// selects them; the flows opened on hold go too, so that none keeps a
    /// verdict from before the pod's policy was known. Pods not known yet
    /// stay held.
    fn release_holds(
        &self,
        maps: &mut Maps,
        held: &[u32],
        known: &BTreeSet<u32>,
        want: &State,
        local: &BTreeMap<IpAddr, u32>,
        st: &mut ApplyStats,
    ) -> Result<(), MapsError> {
        for &id in held {
            if !known.contains(&id) {
                st.held += 1;
                continue;
            }
            let addrs: Vec<IpAddr> = local.iter().filter(|(_, e)| **e == id).map(|(a, _)| *a).collect();
            match want.endpoints.get(&id) {
                Some(v) => maps.policy_mut().set_endpoint_policy(id, *v)?,
                None => maps.policy_mut().remove_endpoint_policy(id)?,
            }
            // Verdicts cached on hold go with its flows, before them.
            maps.policy_mut().store_generation()?;
            st.hold_flows += maps.ct_mut().remove_involving(&addrs)?;
            st.released += 1;
        }
        Ok(())
    }

    /// `d` as this node's map entries: endpoints are the pods of this node
    /// (found by address in the endpoint map).
    fn wanted(&self, maps: &Maps, d: &Desired) -> Result<(State, BTreeMap<IpAddr, u32>), MapsError> {
        let local: BTreeMap<IpAddr, u32> = maps
            .endpoints()
            .entries()?
            .into_iter()
            .map(|e| (e.addr, e.endpoint_id))
            .collect();
        // The ipcache apart (`ipcache_diff`): the cluster's pods, compared
        // by difference.
        let mut s = State {
            cidrs: d.cidrs.clone(),
            ..Default::default()
        };
        // As the map will hold them (cut to fit), so that a long name read
        // back by from_maps compares equal.
        let stored = |n: &str| NameValue::new(n).to_string_lossy();
        for (id, name) in &d.identities {
            s.names.insert((NAME_IDENTITY, *id), stored(name));
        }
        for (n, id) in &d.cidrs {
            s.names.insert((NAME_IDENTITY, *id), stored(&n.to_string()));
        }
        for (id, name) in &d.policies {
            s.names.insert((NAME_POLICY, *id), stored(name));
        }
        let mut seen = BTreeSet::new();
        for ep in d.endpoints.values() {
            let Some(ep_id) = ep.ips.iter().find_map(|ip| local.get(ip)).copied() else {
                continue;
            };
            if !seen.insert(ep_id) {
                continue;
            }
            let flags = if ep.ingress.is_some() { POLICY_F_INGRESS } else { 0 }
                | if ep.egress.is_some() { POLICY_F_EGRESS } else { 0 };
            let mut kinds = [0u8; 2];
            for r in &ep.rules {
                kinds[r.dir as usize] |= r.kinds();
            }
            s.endpoints.insert(
                ep_id,
                EpPolicyValue {
                    identity: ep.identity,
                    ingress_policy: ep.ingress.unwrap_or(0),
                    egress_policy: ep.egress.unwrap_or(0),
                    flags,
                    kinds,
                    pad0: 0,
                },
            );
            for r in &ep.rules {
                for e in r.entries(ep_id) {
                    // Two policies may allow the same thing: the first names it.
                    s.rules.entry((e.rule, e.prefix_len)).or_insert(e.policy);
                }
            }
        }
        Ok((s, local))
    }
}
