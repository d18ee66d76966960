//! Typed access to the datapath maps, and the map writes that make up a
//! Service: backends first, then the slots, then the service entry that
//! makes them reachable, so a packet never sees a slot without its backend.

use crate::layout::*;
use aya::Ebpf;
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use std::net::IpAddr;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map {0} is missing from the object")]
    Missing(&'static str),
    #[error("service {0}: {1}")]
    Service(String, String),
    #[error("pinned map {path}: {source}")]
    Pinned {
        path: String,
        #[source]
        source: MapError,
    },
    #[error(
        "pinned map {path} has key/value sizes {got:?}, this build expects {want:?}: \
         a layout change without a SLUICE_LAYOUT_VERSION bump"
    )]
    Layout {
        path: String,
        got: (u32, u32),
        want: (u32, u32),
    },
}

fn err(name: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Map { name, source }
}

/// Count an address into (or out of) its slot of an address filter. A
/// counter that reached 255 stays there: the slot then always says "maybe",
/// which costs lookups, never correctness.
fn filter_step(filter: &mut Array<MapData, u64>, name: &'static str, ip: IpAddr, add: bool) -> Result<(), MapsError> {
    let slot = vip_slot(&addr(ip));
    let (word, shift) = (slot / 8, (slot % 8) * 8);
    let w = filter.get(&word, 0).map_err(err(name))?;
    let n = match (add, (w >> shift) & 0xff) {
        (_, 255) => 255,
        (true, n) => n + 1,
        (false, 0) => 0,
        (false, n) => n - 1,
    };
    filter
        .set(word, (w & !(0xff << shift)) | (n << shift), 0)
        .map_err(err(name))
}

fn filter_count(filter: &Array<MapData, u64>, name: &'static str, ip: IpAddr) -> Result<u8, MapsError> {
    let slot = vip_slot(&addr(ip));
    let w = filter.get(&(slot / 8), 0).map_err(err(name))?;
    Ok((w >> ((slot % 8) * 8)) as u8)
}

pub struct Maps {
    pub services: HashMap<MapData, SvcKey, SvcValue>,
    /// Counters of VIPs per hash slot, 8 to a word (see layout.h).
    pub vip_filter: Array<MapData, u64>,
    /// The same, of backend addresses (one count per backend entry).
    pub backend_filter: Array<MapData, u64>,
    pub backends: HashMap<MapData, u32, BackendValue>,
    pub revnat: HashMap<MapData, u32, RevNatValue>,
    pub maglev: HashMap<MapData, MaglevKey, MaglevValue>,
    /// The table size the programs were loaded with.
    pub maglev_m: u32,
    pub ct: HashMap<MapData, CtKey, CtValue>,
    pub endpoints: HashMap<MapData, EndpointKey, EndpointValue>,
    pub metrics: PerCpuArray<MapData, MetricsValue>,
    pub info: Array<MapData, DpInfo>,
}

/// A Service port as the datapath sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub rev_nat_id: u32,
    pub algorithm: u8,
    pub affinity_timeout_secs: u32,
    /// Answer packets that find no backend (and, for the VIP, packets to
    /// ports it does not serve) with ICMP port unreachable instead of a
    /// silent drop, so clients fail fast.
    pub reject: bool,
    /// (backend id, address, target port, active). Inactive = terminating:
    /// kept for its connections, given no new ones.
    pub backends: Vec<(u32, IpAddr, u16, bool)>,
}

/// A service port as read back from the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub rev_nat_id: u32,
    pub algorithm: u8,
    pub affinity_timeout_secs: u32,
    pub reject: bool,
    /// The backends taking new connections, in slot order.
    pub active: Vec<u32>,
}

impl Maps {
    /// Take the maps out of a loaded object (the programs keep their own
    /// references); `maglev_m` is the table size it was loaded with.
    pub fn take(ebpf: &mut Ebpf, maglev_m: u32) -> Result<Maps, MapsError> {
        macro_rules! take {
            ($name:literal, $ty:ty) => {{
                let m = ebpf.take_map($name).ok_or(MapsError::Missing($name))?;
                <$ty>::try_from(m).map_err(err($name))?
            }};
        }
        Ok(Maps {
            services: take!("sl_services", HashMap<MapData, SvcKey, SvcValue>),
            vip_filter: take!("sl_vip_filter", Array<MapData, u64>),
            backend_filter: take!("sl_backend_filter", Array<MapData, u64>),
            backends: take!("sl_backends", HashMap<MapData, u32, BackendValue>),
            revnat: take!("sl_revnat", HashMap<MapData, u32, RevNatValue>),
            maglev: take!("sl_maglev", HashMap<MapData, MaglevKey, MaglevValue>),
            maglev_m,
            ct: take!("sl_ct", HashMap<MapData, CtKey, CtValue>),
            endpoints: take!("sl_endpoints", HashMap<MapData, EndpointKey, EndpointValue>),
            metrics: take!("sl_metrics", PerCpuArray<MapData, MetricsValue>),
            info: take!("sl_info", Array<MapData, DpInfo>),
        })
    }

    /// The maps pinned under a versioned directory (`<root>/v<N>`), with the
    /// Maglev table size the attached programs were loaded with.
    pub fn open_pinned(versioned: &Path) -> Result<Maps, MapsError> {
        let mut m = Maps::open_pinned_with(versioned, None)?;
        m.maglev_m = m.info()?.maglev_m;
        if m.maglev_m == 0 {
            return Err(MapsError::Service(
                "*".into(),
                format!(
                    "{} has no program info yet: no sluice program was loaded there",
                    versioned.display()
                ),
            ));
        }
        Ok(m)
    }

    pub(crate) fn open_pinned_with(versioned: &Path, maglev_m: Option<u32>) -> Result<Maps, MapsError> {
        let dir = versioned.join("maps");
        fn open<K, V>(dir: &Path, name: &str, wrap: fn(MapData) -> Map) -> Result<Map, MapsError> {
            let path = dir.join(name);
            let pinned = |source| MapsError::Pinned {
                path: path.display().to_string(),
                source,
            };
            let data = MapData::from_pin(&path).map_err(pinned)?;
            let info = data.info().map_err(pinned)?;
            let (got, want) = (
                (info.key_size(), info.value_size()),
                (size_of::<K>() as u32, size_of::<V>() as u32),
            );
            if got != want {
                return Err(MapsError::Layout {
                    path: path.display().to_string(),
                    got,
                    want,
                });
            }
            Ok(wrap(data))
        }
        macro_rules! open {
            ($name:literal, $variant:ident, $ty:ty, $k:ty, $v:ty) => {
                <$ty>::try_from(open::<$k, $v>(&dir, $name, Map::$variant)?).map_err(err($name))?
            };
        }
        Ok(Maps {
            services: open!("sl_services", HashMap, HashMap<MapData, SvcKey, SvcValue>, SvcKey, SvcValue),
            vip_filter: open!("sl_vip_filter", Array, Array<MapData, u64>, u32, u64),
            backend_filter: open!("sl_backend_filter", Array, Array<MapData, u64>, u32, u64),
            backends: open!("sl_backends", HashMap, HashMap<MapData, u32, BackendValue>, u32, BackendValue),
            revnat: open!("sl_revnat", HashMap, HashMap<MapData, u32, RevNatValue>, u32, RevNatValue),
            maglev: open!("sl_maglev", HashMap, HashMap<MapData, MaglevKey, MaglevValue>, MaglevKey, MaglevValue),
            maglev_m: maglev_m.unwrap_or(0),
            ct: open!("sl_ct", LruHashMap, HashMap<MapData, CtKey, CtValue>, CtKey, CtValue),
            endpoints: open!("sl_endpoints", HashMap, HashMap<MapData, EndpointKey, EndpointValue>, EndpointKey, EndpointValue),
            metrics: open!("sl_metrics", PerCpuArray, PerCpuArray<MapData, MetricsValue>, u32, MetricsValue),
            info: open!("sl_info", Array, Array<MapData, DpInfo>, u32, DpInfo),
        })
    }

    pub fn info(&self) -> Result<DpInfo, MapsError> {
        self.info.get(&0, 0).map_err(err("sl_info"))
    }

    pub fn set_info(&mut self, v: DpInfo) -> Result<(), MapsError> {
        self.info.set(0, v, 0).map_err(err("sl_info"))
    }

    pub fn upsert_service(&mut self, s: &ServiceSpec) -> Result<(), MapsError> {
        let name = format!("{}:{}/{}", s.vip, s.port, s.proto);
        if s.backends.iter().any(|b| b.1.is_ipv4() != s.vip.is_ipv4()) {
            return Err(MapsError::Service(name, "backends must be of the VIP's family".into()));
        }
        // A new VIP enters the filter before anything can be found under
        // it, so that no packet to it passes untranslated.
        if self.services.get(&SvcKey::vip_marker(s.vip), 0).is_err() {
            filter_step(&mut self.vip_filter, "sl_vip_filter", s.vip, true)?;
        }
        for (id, ip, port, active) in &s.backends {
            // Likewise a backend, before replies from it can be expected.
            match self.backends.get(id, 0) {
                Ok(old) if old.addr == addr(*ip) => {}
                Ok(old) => {
                    filter_step(&mut self.backend_filter, "sl_backend_filter", *ip, true)?;
                    filter_step(
                        &mut self.backend_filter,
                        "sl_backend_filter",
                        crate::layout::ip(&old.addr),
                        false,
                    )?;
                }
                Err(_) => filter_step(&mut self.backend_filter, "sl_backend_filter", *ip, true)?,
            }
            let v = BackendValue {
                addr: addr(*ip),
                port: port.to_be(),
                proto: s.proto,
                state: if *active { BACKEND_ACTIVE } else { BACKEND_TERMINATING },
            };
            self.backends.insert(id, v, 0).map_err(err("sl_backends"))?;
        }
        let active: Vec<u32> = s.backends.iter().filter(|b| b.3).map(|b| b.0).collect();
        for (i, id) in active.iter().enumerate() {
            let slot = SvcValue {
                backend_id: *id,
                ..Default::default()
            };
            self.services
                .insert(SvcKey::new(s.vip, s.port, s.proto, i as u16 + 1), slot, 0)
                .map_err(err("sl_services"))?;
        }
        if s.algorithm == SVC_ALG_MAGLEV && !active.is_empty() {
            // The table over the active backends, by identity (address and port).
            let ids: Vec<Vec<u8>> = s
                .backends
                .iter()
                .filter(|b| b.3)
                .map(|b| format!("{}:{}", b.1, b.2).into_bytes())
                .collect();
            let refs: Vec<&[u8]> = ids.iter().map(Vec::as_slice).collect();
            let t = crate::maglev::table(&refs, self.maglev_m);
            for (k, v) in crate::maglev::chunks(s.rev_nat_id, &t, &active) {
                self.maglev.insert(k, v, 0).map_err(err("sl_maglev"))?;
            }
        }
        let rn = RevNatValue {
            addr: addr(s.vip),
            port: s.port.to_be(),
            pad0: 0,
        };
        self.revnat.insert(s.rev_nat_id, rn, 0).map_err(err("sl_revnat"))?;
        let reject = if s.reject { SVC_F_REJECT } else { 0 };
        let master = SvcValue {
            count: active.len() as u16,
            flags: reject,
            rev_nat_id: s.rev_nat_id,
            algorithm: s.algorithm,
            affinity_timeout: s.affinity_timeout_secs,
            ..Default::default()
        };
        self.services
            .insert(SvcKey::new(s.vip, s.port, s.proto, 0), master, 0)
            .map_err(err("sl_services"))?;
        // One marker per VIP: the port written last decides whether
        // unknown ports are rejected (the agent writes one setting per node).
        let marker = SvcValue {
            flags: SVC_F_VIP_MARKER | reject,
            ..Default::default()
        };
        self.services
            .insert(SvcKey::vip_marker(s.vip), marker, 0)
            .map_err(err("sl_services"))?;
        // Slots beyond the new count belong to nobody now.
        let mut slot = active.len() as u16 + 1;
        while self.services.get(&SvcKey::new(s.vip, s.port, s.proto, slot), 0).is_ok() {
            self.services
                .remove(&SvcKey::new(s.vip, s.port, s.proto, slot))
                .map_err(err("sl_services"))?;
            slot += 1;
        }
        Ok(())
    }

    /// The VIP filter's counter for `vip` (what the tests check).
    pub fn vip_filter_count(&self, vip: IpAddr) -> Result<u8, MapsError> {
        filter_count(&self.vip_filter, "sl_vip_filter", vip)
    }

    /// The backend filter's counter for `ip`.
    pub fn backend_filter_count(&self, ip: IpAddr) -> Result<u8, MapsError> {
        filter_count(&self.backend_filter, "sl_backend_filter", ip)
    }

    /// Every service port (slot 0 entries, VIP markers excluded), sorted.
    pub fn services(&self) -> Result<Vec<ServiceView>, MapsError> {
        let mut out = Vec::new();
        for kv in self.services.iter() {
            let (k, v) = kv.map_err(err("sl_services"))?;
            if k.slot != 0 || v.flags & SVC_F_VIP_MARKER != 0 {
                continue;
            }
            let mut active = Vec::with_capacity(v.count as usize);
            for slot in 1..=v.count {
                let sk = SvcKey { slot, ..k };
                if let Ok(sv) = self.services.get(&sk, 0) {
                    active.push(sv.backend_id);
                }
            }
            out.push(ServiceView {
                vip: ip(&k.addr),
                port: u16::from_be(k.port),
                proto: k.proto,
                rev_nat_id: v.rev_nat_id,
                algorithm: v.algorithm,
                affinity_timeout_secs: v.affinity_timeout,
                reject: v.flags & SVC_F_REJECT != 0,
                active,
            });
        }
        out.sort_by_key(|s| (s.vip, s.port, s.proto));
        Ok(out)
    }

    /// Every backend by id, sorted.
    pub fn backends(&self) -> Result<Vec<(u32, BackendValue)>, MapsError> {
        let mut out: Vec<_> = self
            .backends
            .iter()
            .collect::<Result<_, _>>()
            .map_err(err("sl_backends"))?;
        out.sort_by_key(|b| b.0);
        Ok(out)
    }

    /// Ids for backends (address, target port): the id each already has in
    /// the map, fresh ids above every existing one for the others.
    pub fn backend_ids(&self, proto: u8, backends: &[(IpAddr, u16)]) -> Result<Vec<u32>, MapsError> {
        let all = self.backends()?;
        let mut next = all.last().map_or(1, |b| b.0 + 1);
        let mut out: Vec<u32> = Vec::with_capacity(backends.len());
        for (i, (ip_, port)) in backends.iter().enumerate() {
            let want = addr(*ip_);
            let existing = all
                .iter()
                .find(|(_, b)| b.addr == want && b.port == port.to_be() && b.proto == proto)
                .map(|b| b.0);
            let earlier = backends[..i].iter().position(|b| b == &(*ip_, *port)).map(|j| out[j]);
            out.push(existing.or(earlier).unwrap_or_else(|| {
                next += 1;
                next - 1
            }));
        }
        Ok(out)
    }

    /// A reverse-NAT id: the service's own if it exists, else the lowest
    /// unused one. Reads every id (the operator CLI's way; the agent keeps
    /// its allocator in memory).
    pub fn rev_nat_id(&self, vip: IpAddr, port: u16, proto: u8) -> Result<u32, MapsError> {
        if let Ok(v) = self.services.get(&SvcKey::new(vip, port, proto, 0), 0) {
            return Ok(v.rev_nat_id);
        }
        let used: std::collections::BTreeSet<u32> =
            self.revnat.keys().collect::<Result<_, _>>().map_err(err("sl_revnat"))?;
        (1..=u32::MAX)
            .find(|i| !used.contains(i))
            .ok_or_else(|| MapsError::Service(format!("{vip}:{port}/{proto}"), "no free reverse-NAT id".into()))
    }

    /// Remove a service port: the service entry first (no new connections
    /// find it), then its slots, Maglev table and reverse-NAT entry, the
    /// VIP marker when it was the VIP's last port, and backends no other
    /// service uses. Existing conntrack entries age out.
    pub fn delete_service(&mut self, vip: IpAddr, port: u16, proto: u8) -> Result<bool, MapsError> {
        let master_key = SvcKey::new(vip, port, proto, 0);
        let Ok(master) = self.services.get(&master_key, 0) else {
            return Ok(false);
        };
        if master.flags & SVC_F_VIP_MARKER != 0 {
            return Ok(false);
        }
        let all = self.services()?;
        let mine = all
            .iter()
            .find(|s| s.vip == vip && s.port == port && s.proto == proto)
            .map(|s| s.active.clone())
            .unwrap_or_default();
        self.services.remove(&master_key).map_err(err("sl_services"))?;
        for slot in 1..=master.count {
            let _ = self.services.remove(&SvcKey::new(vip, port, proto, slot));
        }
        let chunks = (self.maglev_m as usize).div_ceil(MAGLEV_CHUNK) as u32;
        for chunk in 0..chunks {
            let _ = self.maglev.remove(&MaglevKey {
                rev_nat_id: master.rev_nat_id,
                chunk,
            });
        }
        let _ = self.revnat.remove(&master.rev_nat_id);
        let others: Vec<&ServiceView> = all
            .iter()
            .filter(|s| !(s.vip == vip && s.port == port && s.proto == proto))
            .collect();
        if !others.iter().any(|s| s.vip == vip) && self.services.remove(&SvcKey::vip_marker(vip)).is_ok() {
            filter_step(&mut self.vip_filter, "sl_vip_filter", vip, false)?;
        }
        for id in mine {
            if others.iter().any(|s| s.active.contains(&id)) {
                continue;
            }
            if let Ok(b) = self.backends.get(&id, 0)
                && self.backends.remove(&id).is_ok()
            {
                filter_step(&mut self.backend_filter, "sl_backend_filter", ip(&b.addr), false)?;
            }
        }
        Ok(true)
    }

    /// Every conntrack entry.
    pub fn conntrack(&self) -> Result<Vec<(CtKey, CtValue)>, MapsError> {
        self.ct.iter().collect::<Result<_, _>>().map_err(err("sl_ct"))
    }

    /// Remove every conntrack entry; returns how many.
    pub fn flush_conntrack(&mut self) -> Result<usize, MapsError> {
        let keys: Vec<CtKey> = self.ct.keys().collect::<Result<_, _>>().map_err(err("sl_ct"))?;
        for k in &keys {
            let _ = self.ct.remove(k);
        }
        Ok(keys.len())
    }

    /// Every endpoint, by address.
    pub fn endpoint_entries(&self) -> Result<Vec<(IpAddr, EndpointValue)>, MapsError> {
        let mut out: Vec<(IpAddr, EndpointValue)> = self
            .endpoints
            .iter()
            .map(|kv| kv.map(|(k, v)| (ip(&k.addr), v)))
            .collect::<Result<_, _>>()
            .map_err(err("sl_endpoints"))?;
        out.sort_by_key(|e| e.0);
        Ok(out)
    }

    pub fn add_endpoint(&mut self, ip: IpAddr, ifindex: u32, mac: [u8; 6], endpoint_id: u32) -> Result<(), MapsError> {
        let v = EndpointValue {
            ifindex,
            endpoint_id,
            mac,
            flags: 0,
        };
        self.endpoints
            .insert(EndpointKey { addr: addr(ip) }, v, 0)
            .map_err(err("sl_endpoints"))
    }

    /// Remove a pod address, if it still belongs to `endpoint_id`: after a
    /// quick address reuse the entry may already be the next pod's.
    pub fn remove_endpoint(&mut self, ip: IpAddr, endpoint_id: u32) -> Result<bool, MapsError> {
        let k = EndpointKey { addr: addr(ip) };
        match self.endpoints.get(&k, 0) {
            Ok(v) if v.endpoint_id == endpoint_id => {
                self.endpoints.remove(&k).map_err(err("sl_endpoints"))?;
                Ok(true)
            }
            Ok(_) | Err(MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(err("sl_endpoints")(e)),
        }
    }

    /// Packets and bytes per (reason, direction), summed over CPUs.
    pub fn metrics(&self) -> Result<Vec<(Reason, Direction, u64, u64)>, MapsError> {
        let mut out = Vec::new();
        for r in Reason::ALL {
            for d in [Direction::Egress, Direction::Ingress] {
                let per_cpu = self.metrics.get(&metrics_index(r, d), 0).map_err(err("sl_metrics"))?;
                let (p, b) = per_cpu.iter().fold((0, 0), |(p, b), v| (p + v.packets, b + v.bytes));
                out.push((r, d, p, b));
            }
        }
        Ok(out)
    }

    pub fn count(&self, reason: Reason, dir: Direction) -> Result<u64, MapsError> {
        Ok(self
            .metrics()?
            .into_iter()
            .find(|m| m.0 == reason && m.1 == dir)
            .map_or(0, |m| m.2))
    }
}
