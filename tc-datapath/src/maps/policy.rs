//! The network-policy maps: the ipcache (pod address -> identity), CIDR
//! identities, each endpoint's policy state and the allow rules (a hash for
//! one port, every port and every protocol; a trie for port ranges).

use super::{CIDR, EP_POLICY, IPCACHE, MapsError, POLICY, POLICY_GEN, POLICY_RANGES, Source, err, lookup, removed};
use crate::layout::*;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData};
use std::net::IpAddr;

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn one(port: u16) -> PortRange {
        PortRange {
            first: port,
            last: port,
        }
    }
}

/// One allow rule of an endpoint, as the datapath holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    pub dir: Direction,
    /// The peer's identity; `ID_ANY` = anyone.
    pub identity: u32,
    /// 0 = every protocol (and then every port).
    pub proto: u8,
    /// `None` = every port.
    pub ports: Option<PortRange>,
    /// The policy the rule comes from (named in `sl_names`).
    pub policy: u32,
}

/// One entry of the rule maps: where it goes is told by its prefix length
/// (see `entry_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleEntry {
    pub rule: PolicyMatch,
    pub prefix_len: u32,
    /// The policy that allows it.
    pub policy: u32,
}

/// A pod address's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AddrIdentity {
    pub addr: IpAddr,
    pub identity: u32,
}

/// A CIDR's identity; `prefix` is the family's own length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CidrIdentity {
    pub net: IpAddr,
    pub prefix: u8,
    pub identity: u32,
}

/// An endpoint's policy state, with its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointPolicyEntry {
    pub endpoint_id: u32,
    pub state: EpPolicyValue,
}

/// The kind (`RULE_K_*`) of a rule entry of this prefix length (0 for one
/// port, which every lookup tries).
pub fn entry_kind(prefix_len: u32) -> u8 {
    match prefix_len {
        POLICY_BITS_ANY_PROTO => RULE_K_ANY_PROTO,
        POLICY_BITS_ANY_PORT => RULE_K_ANY_PORT,
        POLICY_BITS_EXACT => 0,
        _ => RULE_K_RANGE,
    }
}

impl Rule {
    /// The entries that make up this rule for `endpoint_id`: one, or for a
    /// port range the aligned power-of-two blocks that tile it exactly (at
    /// most 30 for 16-bit ports). See `entry_kind` for where each goes.
    pub fn keys(&self, endpoint_id: u32) -> Vec<Key<PolicyMatch>> {
        let m = PolicyMatch {
            endpoint_id,
            identity: self.identity,
            dir: self.dir as u8,
            proto: self.proto,
            port: 0,
        };
        match (self.proto, self.ports) {
            (0, _) => vec![Key::new(POLICY_BITS_ANY_PROTO, m)],
            (_, None) => vec![Key::new(POLICY_BITS_ANY_PORT, m)],
            (_, Some(r)) => port_blocks(r)
                .into_iter()
                .map(|b| {
                    Key::new(
                        POLICY_BITS_ANY_PORT + b.bits,
                        PolicyMatch {
                            port: b.first.to_be(),
                            ..m
                        },
                    )
                })
                .collect(),
        }
    }

    /// The `RULE_K_*` bits the endpoint's entry must carry for this rule.
    pub fn kinds(&self) -> u8 {
        self.keys(0).iter().fold(0, |k, e| k | entry_kind(e.prefix_len()))
    }

    /// The entries of this rule for `endpoint_id`, with their policy.
    pub fn entries(&self, endpoint_id: u32) -> impl Iterator<Item = RuleEntry> + use<> {
        let policy = self.policy;
        self.keys(endpoint_id).into_iter().map(move |k| RuleEntry {
            rule: k.data(),
            prefix_len: k.prefix_len(),
            policy,
        })
    }
}

/// An aligned block of ports: `first` and the prefix bits that fix it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortBlock {
    pub first: u16,
    pub bits: u32,
}

/// The aligned blocks that cover a range exactly.
pub fn port_blocks(r: PortRange) -> Vec<PortBlock> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(r.first), u32::from(r.last));
    while lo <= hi {
        // The largest block starting at `lo` that is aligned and fits.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            1u32 << lo.trailing_zeros().min(16)
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push(PortBlock {
            first: lo as u16,
            bits: 16 - size.trailing_zeros(),
        });
        lo += size;
    }
    out
}

/// The trie key of a CIDR: IPv4 v4-mapped, its length counted after the
/// 96-bit mapping prefix.
pub fn cidr_key(net: IpAddr, prefix: u8) -> Key<Addr> {
    let bits = if net.is_ipv4() {
        96 + u32::from(prefix)
    } else {
        u32::from(prefix)
    };
    Key::new(bits, addr(net))
}

pub struct PolicyMaps {
    ipcache: HashMap<MapData, EndpointKey, IpcacheValue>,
    cidr: LpmTrie<MapData, Addr, IpcacheValue>,
    ep_policy: HashMap<MapData, u32, EpPolicyValue>,
    rules: HashMap<MapData, PolicyMatch, PolicyValue>,
    rule_ranges: LpmTrie<MapData, PolicyMatch, PolicyValue>,
    generation: Array<MapData, u64>,
    /// Writes only mark the generation due (`defer_generation`).
    deferring: bool,
    /// A write since the generation was last stored.
    due: bool,
}

impl PolicyMaps {
    pub fn open(src: &mut Source<'_>) -> Result<PolicyMaps, MapsError> {
        Ok(PolicyMaps {
            ipcache: src.map(&IPCACHE)?,
            cidr: src.map(&CIDR)?,
            ep_policy: src.map(&EP_POLICY)?,
            rules: src.map(&POLICY)?,
            rule_ranges: src.map(&POLICY_RANGES)?,
            generation: src.map(&POLICY_GEN)?,
            deferring: false,
            due: false,
        })
    }

    /// After a write that may take an allowed verdict back (every write
    /// but a rule's insertion, which only allows more): a new policy
    /// generation, so that no CPU's cached verdict counts any more (see
    /// `verdict_slot` in layout.h); while deferring, only marked due. The
    /// write's own error comes first; the generation is stored either way.
    fn changed<T>(&mut self, write: Result<T, MapsError>) -> Result<T, MapsError> {
        self.due = true;
        let stored = if self.deferring {
            Ok(())
        } else {
            self.store_generation()
        };
        let v = write?;
        stored?;
        Ok(v)
    }

    /// `changed` for a removal: one that found nothing changed nothing
    /// (every DEL removes its pod's policy entry, there or not).
    fn removal(&mut self, r: Result<bool, MapsError>) -> Result<(), MapsError> {
        match r {
            Ok(false) => Ok(()),
            r => self.changed(r.map(|_| ())),
        }
    }

    /// Store a new policy generation if a write made one due. It is the
    /// time of the store, so that writers in other processes (the CNI
    /// binary's hold, the agent) never store one a cache has seen.
    pub fn store_generation(&mut self) -> Result<(), MapsError> {
        if !self.due {
            return Ok(());
        }
        self.generation
            .set(0, super::ct::now_ns(), 0)
            .map_err(err(POLICY_GEN.name))?;
        self.due = false;
        Ok(())
    }

    /// Until `end_deferral`, writes only mark a new generation due, and
    /// `store_generation` stores it: a change of many entries costs one
    /// store, not one per entry, and cached verdicts hold until the change
    /// is written (as they would had it come a little later).
    pub fn defer_generation(&mut self) {
        self.deferring = true;
    }

    /// Stop deferring, and store the generation if due.
    pub fn end_deferral(&mut self) -> Result<(), MapsError> {
        self.deferring = false;
        self.store_generation()
    }

    /// The policy generation (CLOCK_MONOTONIC ns of the last write that
    /// could take a verdict back; 0: none yet).
    pub fn generation(&self) -> Result<u64, MapsError> {
        self.generation.get(&0, 0).map_err(err(POLICY_GEN.name))
    }

    /// A pod address's identity (cluster-wide).
    pub fn set_identity(&mut self, a: IpAddr, identity: u32) -> Result<(), MapsError> {
        let v = IpcacheValue { identity, pad0: 0 };
        let w = self
            .ipcache
            .insert(EndpointKey { addr: addr(a) }, v, 0)
            .map_err(err(IPCACHE.name));
        self.changed(w)
    }

    pub fn remove_identity(&mut self, a: IpAddr) -> Result<(), MapsError> {
        let r = removed(self.ipcache.remove(&EndpointKey { addr: addr(a) }), &IPCACHE);
        self.removal(r)
    }

    /// One address's identity in the ipcache.
    pub fn identity(&self, a: IpAddr) -> Result<Option<u32>, MapsError> {
        Ok(lookup(&self.ipcache, &IPCACHE, &EndpointKey { addr: addr(a) })?.map(|v| v.identity))
    }

    /// Every address of the ipcache with its identity, sorted.
    pub fn identities(&self) -> Result<Vec<AddrIdentity>, MapsError> {
        let mut out: Vec<AddrIdentity> = self
            .ipcache
            .iter()
            .map(|kv| {
                kv.map(|(k, v)| AddrIdentity {
                    addr: ip(&k.addr),
                    identity: v.identity,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(err(IPCACHE.name))?;
        out.sort();
        Ok(out)
    }

    /// A CIDR's identity. `prefix` is the family's own length (0..=32 for IPv4).
    pub fn set_cidr(&mut self, net: IpAddr, prefix: u8, identity: u32) -> Result<(), MapsError> {
        let v = IpcacheValue { identity, pad0: 0 };
        let w = self.cidr.insert(&cidr_key(net, prefix), v, 0).map_err(err(CIDR.name));
        self.changed(w)
    }

    pub fn remove_cidr(&mut self, net: IpAddr, prefix: u8) -> Result<(), MapsError> {
        let r = removed(self.cidr.remove(&cidr_key(net, prefix)), &CIDR);
        self.removal(r)
    }

    /// Every CIDR of the trie with its identity, sorted.
    pub fn cidrs(&self) -> Result<Vec<CidrIdentity>, MapsError> {
        let mut out = Vec::new();
        for kv in self.cidr.iter() {
            let (k, v) = kv.map_err(err(CIDR.name))?;
            let net = ip(&k.data());
            let len = if net.is_ipv4() {
                k.prefix_len() - 96
            } else {
                k.prefix_len()
            };
            out.push(CidrIdentity {
                net,
                prefix: len as u8,
                identity: v.identity,
            });
        }
        out.sort();
        Ok(out)
    }

    pub fn set_endpoint_policy(&mut self, endpoint_id: u32, v: EpPolicyValue) -> Result<(), MapsError> {
        let w = self.ep_policy.insert(endpoint_id, v, 0).map_err(err(EP_POLICY.name));
        self.changed(w)
    }

    pub fn remove_endpoint_policy(&mut self, endpoint_id: u32) -> Result<(), MapsError> {
        let r = removed(self.ep_policy.remove(&endpoint_id), &EP_POLICY);
        self.removal(r)
    }

    pub fn endpoint_policy(&self, endpoint_id: u32) -> Result<Option<EpPolicyValue>, MapsError> {
        lookup(&self.ep_policy, &EP_POLICY, &endpoint_id)
    }

    /// Every endpoint's policy state, by id.
    pub fn endpoint_policies(&self) -> Result<Vec<EndpointPolicyEntry>, MapsError> {
        Ok(super::entries(&self.ep_policy, &EP_POLICY)?
            .into_iter()
            .map(|(endpoint_id, state)| EndpointPolicyEntry { endpoint_id, state })
            .collect())
    }

    /// Write the entries of `r` (the endpoint's `kinds` are the caller's:
    /// see `Rule::kinds`).
    pub fn insert_rule(&mut self, endpoint_id: u32, r: &Rule) -> Result<(), MapsError> {
        r.entries(endpoint_id).try_for_each(|e| self.set_rule_entry(&e))
    }

    pub fn remove_rule(&mut self, endpoint_id: u32, r: &Rule) -> Result<(), MapsError> {
        r.entries(endpoint_id).try_for_each(|e| self.remove_rule_entry(&e))
    }

    /// One rule entry: a range block goes to the range trie, anything else
    /// to the hash. No new policy generation: an insertion only allows
    /// more, so every cached verdict still holds.
    pub fn set_rule_entry(&mut self, e: &RuleEntry) -> Result<(), MapsError> {
        let v = PolicyValue {
            policy: e.policy,
            pad0: 0,
        };
        if entry_kind(e.prefix_len) == RULE_K_RANGE {
            self.rule_ranges
                .insert(&Key::new(e.prefix_len, e.rule), v, 0)
                .map_err(err(POLICY_RANGES.name))
        } else {
            self.rules.insert(e.rule, v, 0).map_err(err(POLICY.name))
        }
    }

    pub fn remove_rule_entry(&mut self, e: &RuleEntry) -> Result<(), MapsError> {
        let r = self.take_rule_entry(e);
        self.removal(r)
    }

    /// Remove a rule's entry: true when it was there.
    fn take_rule_entry(&mut self, e: &RuleEntry) -> Result<bool, MapsError> {
        if entry_kind(e.prefix_len) == RULE_K_RANGE {
            removed(self.rule_ranges.remove(&Key::new(e.prefix_len, e.rule)), &POLICY_RANGES)
        } else {
            removed(self.rules.remove(&e.rule), &POLICY)
        }
    }

    /// Remove a rule's entry without a new policy generation: what a
    /// writer that forgot the generation would do. Tests show with it that
    /// a cached verdict outlives such a write (so the cache is consulted).
    #[doc(hidden)]
    pub fn remove_rule_entry_keeping_generation(&mut self, e: &RuleEntry) -> Result<(), MapsError> {
        self.take_rule_entry(e).map(|_| ())
    }

    /// The rule entries (of one endpoint, or all), sorted; the hash's keys
    /// get the prefix length their wildcards stand for.
    pub fn rule_entries(&self, endpoint_id: Option<u32>) -> Result<Vec<RuleEntry>, MapsError> {
        let mine = |m: &PolicyMatch| endpoint_id.is_none_or(|e| e == m.endpoint_id);
        let mut out = Vec::new();
        for kv in self.rules.iter() {
            let (m, v) = kv.map_err(err(POLICY.name))?;
            let prefix_len = match (m.proto, m.port) {
                (0, _) => POLICY_BITS_ANY_PROTO,
                (_, 0) => POLICY_BITS_ANY_PORT,
                _ => POLICY_BITS_EXACT,
            };
            if mine(&m) {
                out.push(RuleEntry {
                    rule: m,
                    prefix_len,
                    policy: v.policy,
                });
            }
        }
        for kv in self.rule_ranges.iter() {
            let (k, v) = kv.map_err(err(POLICY_RANGES.name))?;
            let m = k.data();
            if mine(&m) {
                out.push(RuleEntry {
                    rule: m,
                    prefix_len: k.prefix_len(),
                    policy: v.policy,
                });
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The blocks tile the range exactly, each aligned to its size.
        #[test]
        fn port_blocks_tile_the_range(a in any::<u16>(), b in any::<u16>()) {
            let (lo, hi) = (a.min(b), a.max(b));
            let blocks = port_blocks(PortRange { first: lo, last: hi });
            prop_assert!(blocks.len() <= 30);
            let mut next = u32::from(lo);
            for b in blocks {
                let size = 1u32 << (16 - b.bits);
                prop_assert_eq!(u32::from(b.first), next);
                prop_assert_eq!(u32::from(b.first) % size, 0);
                next += size;
            }
            prop_assert_eq!(next, u32::from(hi) + 1);
        }
    }

    #[test]
    fn rule_keys_pick_the_wildcard_by_length() {
        let r = |proto, ports| Rule {
            dir: Direction::Ingress,
            identity: 300,
            proto,
            ports,
            policy: 1,
        };
        assert_eq!(r(0, None).keys(7)[0].prefix_len(), POLICY_BITS_ANY_PROTO);
        assert_eq!(r(6, None).keys(7)[0].prefix_len(), POLICY_BITS_ANY_PORT);
        let exact = r(6, Some(PortRange::one(80))).keys(7);
        assert_eq!((exact.len(), exact[0].prefix_len()), (1, POLICY_BITS_EXACT));
        assert_eq!(exact[0].data().port, 80u16.to_be());
        // 8000-8080 = 8000-8063 (64 ports), 8064-8079 (16), 8080.
        let blocks: Vec<(u16, u32)> = port_blocks(PortRange {
            first: 8000,
            last: 8080,
        })
        .iter()
        .map(|b| (b.first, b.bits))
        .collect();
        assert_eq!(blocks, vec![(8000, 10), (8064, 12), (8080, 16)]);
        let all: Vec<(u16, u32)> = port_blocks(PortRange { first: 0, last: 65535 })
            .iter()
            .map(|b| (b.first, b.bits))
            .collect();
        assert_eq!(all, vec![(0, 0)]);
    }
}
