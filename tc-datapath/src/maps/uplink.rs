//! Traffic from outside the node: the uplink program's NAT entries (both
//! directions of each connection to a NodePort, load-balancer IP or
//! external IP), the uplinks' SNAT addresses, and the source ranges of
//! load balancers.

use super::{LB_SOURCES, MapDef, MapsError, NAT, NAT_NEW, Source, UPLINKS, entries, err, ignore_missing};
use crate::layout::{
    Addr, CtKey, LbSourceMatch, NAT_F_REPLY, NAT_F_SNAT, NAT_SNAT_HOLD_NS, NatValue, UplinkValue, addr,
};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub struct UplinkMaps {
    nat: HashMap<MapData, CtKey, NatValue>,
    nat_new: HashMap<MapData, CtKey, NatValue>,
    uplinks: HashMap<MapData, u32, UplinkValue>,
    sources: LpmTrie<MapData, LbSourceMatch, u32>,
}

/// Every entry of a NAT table.
fn nat_table(map: &HashMap<MapData, CtKey, NatValue>, def: &MapDef) -> Result<Vec<(CtKey, NatValue)>, MapsError> {
    map.iter().collect::<Result<_, _>>().map_err(err(def.name))
}

/// Remove `map`'s entries expired at `now_ns`, each read again just before.
fn collect_expired(
    map: &mut HashMap<MapData, CtKey, NatValue>,
    def: &MapDef,
    now_ns: u64,
    snat_hold_ns: u64,
) -> Result<usize, MapsError> {
    let expired: Vec<CtKey> = nat_table(map, def)?
        .into_iter()
        .filter(|(_, v)| collectable(v, now_ns, snat_hold_ns))
        .map(|(k, _)| k)
        .collect();
    let mut removed = 0;
    for k in &expired {
        match map.get(k, 0) {
            Ok(v) if collectable(&v, now_ns, snat_hold_ns) => {
                ignore_missing(map.remove(k), def)?;
                removed += 1;
            }
            _ => {}
        }
    }
    Ok(removed)
}

/// Whether an entry may go at `now_ns`: once expired, but a SNAT reply
/// entry (the one holding its port) only `snat_hold_ns` later.
fn collectable(v: &NatValue, now_ns: u64, snat_hold_ns: u64) -> bool {
    let snat_reply = v.flags & (NAT_F_REPLY | NAT_F_SNAT) == NAT_F_REPLY | NAT_F_SNAT;
    let hold = if snat_reply { snat_hold_ns } else { 0 };
    v.expires_ns.saturating_add(hold) <= now_ns
}

/// A source range of one frontend, as the trie keys it.
fn source_key(rev_nat_id: u32, net: IpAddr, prefix: u8) -> Key<LbSourceMatch> {
    // IPv4 is v4-mapped: its prefix starts after the 96 bits of ::ffff:0:0/96.
    let bits = match net {
        IpAddr::V4(_) => 96 + u32::from(prefix.min(32)),
        IpAddr::V6(_) => u32::from(prefix.min(128)),
    };
    Key::new(
        32 + bits,
        LbSourceMatch {
            rev_nat_id,
            addr: addr(net),
        },
    )
}

impl UplinkMaps {
    pub fn open(src: &mut Source<'_>) -> Result<UplinkMaps, MapsError> {
        Ok(UplinkMaps {
            nat: src.map(&NAT)?,
            nat_new: src.map(&NAT_NEW)?,
            uplinks: src.map(&UPLINKS)?,
            sources: src.map(&LB_SOURCES)?,
        })
    }

    /// Make `ifindex` an uplink whose connections to backends elsewhere
    /// come from `v4` / `v6`.
    pub fn set_uplink(&mut self, ifindex: u32, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> Result<(), MapsError> {
        let v = UplinkValue {
            addr4: v4.map(|a| addr(IpAddr::V4(a))).unwrap_or_default(),
            addr6: v6.map(|a| addr(IpAddr::V6(a))).unwrap_or_default(),
        };
        self.uplinks.insert(ifindex, v, 0).map_err(err(UPLINKS.name))
    }

    pub fn remove_uplink(&mut self, ifindex: u32) -> Result<(), MapsError> {
        ignore_missing(self.uplinks.remove(&ifindex), &UPLINKS)
    }

    /// Every uplink: ifindex and SNAT addresses.
    pub fn uplinks(&self) -> Result<Vec<(u32, UplinkValue)>, MapsError> {
        entries(&self.uplinks, &UPLINKS)
    }

    /// Every NAT entry (both directions of each connection from outside),
    /// answered or not.
    pub fn nat_entries(&self) -> Result<Vec<(CtKey, NatValue)>, MapsError> {
        let mut all = self.answered_entries()?;
        all.extend(self.unanswered_entries()?);
        Ok(all)
    }

    /// The entries of connections the client has answered (`sl_nat`).
    pub fn answered_entries(&self) -> Result<Vec<(CtKey, NatValue)>, MapsError> {
        nat_table(&self.nat, &NAT)
    }

    /// Write one answered entry (state carried over, tests).
    pub fn insert_answered(&mut self, k: CtKey, v: NatValue) -> Result<(), MapsError> {
        self.nat.insert(k, v, 0).map_err(err(NAT.name))
    }

    /// The entries of connections not answered yet (`sl_nat_new`).
    pub fn unanswered_entries(&self) -> Result<Vec<(CtKey, NatValue)>, MapsError> {
        nat_table(&self.nat_new, &NAT_NEW)
    }

    /// Remove the NAT entries, answered or not, whose deadline passed
    /// before `now_ns` (CLOCK_MONOTONIC, as `ct::now_ns`); returns how
    /// many went. An entry a packet refreshed since the scan stays.
    pub fn collect(&mut self, now_ns: u64) -> Result<usize, MapsError> {
        // An answered connection's SNAT port stays taken while the backend
        // may hold its 4-tuple in TIME_WAIT (uplink.h, snat_claim: the
        // entry still there holds it); an unanswered one's is free at once.
        Ok(collect_expired(&mut self.nat, &NAT, now_ns, NAT_SNAT_HOLD_NS)?
            + collect_expired(&mut self.nat_new, &NAT_NEW, now_ns, 0)?)
    }

    /// Admit clients from `net/prefix` to the external frontend `rev_nat_id`.
    pub fn add_source(&mut self, rev_nat_id: u32, net: IpAddr, prefix: u8) -> Result<(), MapsError> {
        self.sources
            .insert(&source_key(rev_nat_id, net, prefix), 1, 0)
            .map_err(err(LB_SOURCES.name))
    }

    pub fn remove_source(&mut self, rev_nat_id: u32, net: IpAddr, prefix: u8) -> Result<(), MapsError> {
        ignore_missing(self.sources.remove(&source_key(rev_nat_id, net, prefix)), &LB_SOURCES)
    }

    /// Every source range: (frontend rev_nat_id, address, prefix length of
    /// the address as written: IPv4 ones count from the v4-mapped 96).
    pub fn sources(&self) -> Result<Vec<(u32, Addr, u32)>, MapsError> {
        let mut out = Vec::new();
        for k in self.sources.keys() {
            let k = k.map_err(err(LB_SOURCES.name))?;
            let m = k.data();
            out.push((m.rev_nat_id, m.addr, k.prefix_len() - 32));
        }
        Ok(out)
    }
}
