//! Traffic from outside the node: the uplink program's NAT entries (both
//! directions of each connection to a NodePort, load-balancer IP or
//! external IP), the uplinks' SNAT addresses, and the source ranges of
//! load balancers.

use super::{LB_SOURCES, MapDef, MapsError, NAT, NAT_NEW, SNAT_HELD, Source, UPLINKS, entries, err, ignore_missing};
use crate::layout::{Addr, CtKey, LbSourceMatch, NatValue, UplinkValue, addr};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub struct UplinkMaps {
    nat: HashMap<MapData, CtKey, NatValue>,
    nat_new: HashMap<MapData, CtKey, NatValue>,
    snat_held: HashMap<MapData, CtKey, u64>,
    uplinks: HashMap<MapData, u32, UplinkValue>,
    sources: LpmTrie<MapData, LbSourceMatch, u32>,
}

/// Every entry of a NAT table.
fn nat_table(map: &HashMap<MapData, CtKey, NatValue>, def: &MapDef) -> Result<Vec<(CtKey, NatValue)>, MapsError> {
    use aya::maps::IterableMap;
    Ok(crate::raw_map::entries(map.map(), def.name)?)
}

/// Remove `map`'s entries expired at `now_ns`, each read again just before.
fn collect_expired(map: &mut HashMap<MapData, CtKey, NatValue>, def: &MapDef, now_ns: u64) -> Result<usize, MapsError> {
    // Streamed, as conntrack's pass: the expired keys kept, not the table.
    let mut expired = Vec::new();
    {
        use aya::maps::IterableMap;
        crate::raw_map::for_each(map.map(), def.name, |k: CtKey, v: NatValue| {
            if v.expires_ns <= now_ns {
                expired.push(k)
            }
        })?;
    }
    let mut removed = 0;
    for k in &expired {
        match map.get(k, 0) {
            Ok(v) if v.expires_ns <= now_ns => {
                ignore_missing(map.remove(k), def)?;
                removed += 1;
            }
            _ => {}
        }
    }
    Ok(removed)
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
            snat_held: src.map(&SNAT_HELD)?,
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

    /// SNAT ports held past their connection's close: the reply's key
    /// (backend -> node:port) and when the hold ends (CLOCK_MONOTONIC ns;
    /// past ones linger until the LRU reuses them).
    pub fn snat_held(&self) -> Result<Vec<(CtKey, u64)>, MapsError> {
        self.snat_held
            .iter()
            .collect::<Result<_, _>>()
            .map_err(err(SNAT_HELD.name))
    }

    /// Hold a SNAT port until `until_ns` (as the programs do at a close;
    /// tests).
    pub fn hold_snat_port(&mut self, k: CtKey, until_ns: u64) -> Result<(), MapsError> {
        self.snat_held.insert(k, until_ns, 0).map_err(err(SNAT_HELD.name))
    }

    /// The entries of connections not answered yet (`sl_nat_new`).
    pub fn unanswered_entries(&self) -> Result<Vec<(CtKey, NatValue)>, MapsError> {
        nat_table(&self.nat_new, &NAT_NEW)
    }

    /// Remove the NAT entries, answered or not, whose deadline passed
    /// before `now_ns` (CLOCK_MONOTONIC, as `ct::now_ns`); returns how
    /// many went. An entry a packet refreshed since the scan stays.
    pub fn collect(&mut self, now_ns: u64) -> Result<usize, MapsError> {
        Ok(collect_expired(&mut self.nat, &NAT, now_ns)? + collect_expired(&mut self.nat_new, &NAT_NEW, now_ns)?)
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
