//! Pods' hostPorts: (node address, port, protocol) -> the pod's address
//! and containerPort. The CNI binary is the one writer (ADD from the
//! runtime's portMappings, DEL); the uplink programs and the socket hooks
//! read it.

use super::{HOSTPORTS, MapsError, Source, err, ignore_missing, lookup};
use crate::layout::{HostportKey, HostportValue, addr, ip};
use aya::maps::{HashMap, MapData};
use std::net::{IpAddr, SocketAddr};

/// One hostPort as the tools show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort {
    /// The node's address and port.
    pub host: SocketAddr,
    pub proto: u8,
    /// The pod's address and containerPort.
    pub pod: SocketAddr,
    pub endpoint_id: u32,
}

pub struct HostPortMaps {
    map: HashMap<MapData, HostportKey, HostportValue>,
}

pub fn key(host: IpAddr, port: u16, proto: u8) -> HostportKey {
    HostportKey {
        addr: addr(host),
        port: port.to_be(),
        proto,
        pad0: 0,
    }
}

impl HostPortMaps {
    pub fn open(src: &mut Source<'_>) -> Result<HostPortMaps, MapsError> {
        Ok(HostPortMaps {
            map: src.map(&HOSTPORTS)?,
        })
    }

    /// Who holds `host`:`port`/`proto` (its endpoint id), if anyone.
    pub fn holder(&self, host: IpAddr, port: u16, proto: u8) -> Result<Option<u32>, MapsError> {
        Ok(lookup(&self.map, &HOSTPORTS, &key(host, port, proto))?.map(|v| v.endpoint_id))
    }

    pub fn put(&mut self, h: &HostPort) -> Result<(), MapsError> {
        let v = HostportValue {
            addr: addr(h.pod.ip()),
            port: h.pod.port().to_be(),
            pad0: 0,
            endpoint_id: h.endpoint_id,
        };
        self.map
            .insert(key(h.host.ip(), h.host.port(), h.proto), v, 0)
            .map_err(err(HOSTPORTS.name))
    }

    /// Every hostPort.
    pub fn entries(&self) -> Result<Vec<HostPort>, MapsError> {
        let mut out: Vec<HostPort> = Vec::new();
        for kv in self.map.iter() {
            let (k, v) = kv.map_err(err(HOSTPORTS.name))?;
            out.push(HostPort {
                host: SocketAddr::new(ip(&k.addr), u16::from_be(k.port)),
                proto: k.proto,
                pod: SocketAddr::new(ip(&v.addr), u16::from_be(v.port)),
                endpoint_id: v.endpoint_id,
            });
        }
        out.sort_by_key(|h| (h.host, h.proto));
        Ok(out)
    }

    /// Remove every hostPort of endpoint `endpoint_id`; returns how many.
    pub fn remove_endpoint(&mut self, endpoint_id: u32) -> Result<usize, MapsError> {
        let mine: Vec<HostPort> = self
            .entries()?
            .into_iter()
            .filter(|h| h.endpoint_id == endpoint_id)
            .collect();
        for h in &mine {
            ignore_missing(self.map.remove(&key(h.host.ip(), h.host.port(), h.proto)), &HOSTPORTS)?;
        }
        Ok(mine.len())
    }
}
