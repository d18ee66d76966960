//! Typed access to the datapath maps, and the map writes that make up a
//! Service: backends first, then the slots, then the service entry that
//! makes them reachable, so a packet never sees a slot without its backend.

use crate::layout::*;
use aya::Ebpf;
use aya::maps::{HashMap, MapData, MapError, PerCpuArray};
use std::net::IpAddr;

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
}

fn err(name: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Map { name, source }
}

pub struct Maps {
    pub services: HashMap<MapData, SvcKey, SvcValue>,
    pub backends: HashMap<MapData, u32, BackendValue>,
    pub revnat: HashMap<MapData, u16, RevNatValue>,
    pub maglev: HashMap<MapData, MaglevKey, MaglevValue>,
    /// The table size the programs were loaded with.
    pub maglev_m: u32,
    pub ct: HashMap<MapData, CtKey, CtValue>,
    pub endpoints: HashMap<MapData, EndpointKey, EndpointValue>,
    pub metrics: PerCpuArray<MapData, MetricsValue>,
}

/// A Service port as the datapath sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub rev_nat_id: u16,
    pub algorithm: u8,
    pub affinity_timeout_secs: u32,
    /// (backend id, address, target port, active). Inactive = terminating:
    /// kept for its connections, given no new ones.
    pub backends: Vec<(u32, IpAddr, u16, bool)>,
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
            backends: take!("sl_backends", HashMap<MapData, u32, BackendValue>),
            revnat: take!("sl_revnat", HashMap<MapData, u16, RevNatValue>),
            maglev: take!("sl_maglev", HashMap<MapData, MaglevKey, MaglevValue>),
            maglev_m,
            ct: take!("sl_ct", HashMap<MapData, CtKey, CtValue>),
            endpoints: take!("sl_endpoints", HashMap<MapData, EndpointKey, EndpointValue>),
            metrics: take!("sl_metrics", PerCpuArray<MapData, MetricsValue>),
        })
    }

    pub fn upsert_service(&mut self, s: &ServiceSpec) -> Result<(), MapsError> {
        let name = format!("{}:{}/{}", s.vip, s.port, s.proto);
        if s.vip.is_ipv4() != s.backends.iter().all(|b| b.1.is_ipv4()) {
            return Err(MapsError::Service(name, "backends must be of the VIP's family".into()));
        }
        for (id, ip, port, active) in &s.backends {
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
        let master = SvcValue {
            count: active.len() as u16,
            rev_nat_id: s.rev_nat_id,
            algorithm: s.algorithm,
            affinity_timeout: s.affinity_timeout_secs,
            ..Default::default()
        };
        self.services
            .insert(SvcKey::new(s.vip, s.port, s.proto, 0), master, 0)
            .map_err(err("sl_services"))?;
        let marker = SvcValue {
            flags: SVC_F_VIP_MARKER,
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
