//! The node's pods, by address: what the source check holds a pod's
//! packets to, and how policy finds the pod an address belongs to.

use super::{ENDPOINTS, MapsError, Source, capacity, err, lookup};
use crate::layout::{EndpointKey, EndpointValue, addr, ip};
use aya::maps::{HashMap, MapData};
use std::net::IpAddr;

/// One address of a pod on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: IpAddr,
    /// The pod interface, in the pod's netns.
    pub ifindex: u32,
    /// The owner tag of the attachment (`pin::attachment_id`).
    pub endpoint_id: u32,
    pub mac: [u8; 6],
    /// The node-side parent of the pod's macvlan/ipvlan interface, where
    /// traffic from outside is handed in; 0 = none (an ENI of its own).
    pub parent_ifindex: u32,
    /// The pod's network namespace (`SO_NETNS_COOKIE`); 0 = not known,
    /// and the source check does not hold sockets to it.
    pub netns_cookie: u64,
}

pub struct EndpointMaps {
    endpoints: HashMap<MapData, EndpointKey, EndpointValue>,
}

fn key(a: IpAddr) -> EndpointKey {
    EndpointKey { addr: addr(a) }
}

fn view(a: IpAddr, v: &EndpointValue) -> Endpoint {
    Endpoint {
        addr: a,
        ifindex: v.ifindex,
        endpoint_id: v.endpoint_id,
        mac: v.mac,
        parent_ifindex: v.parent_ifindex,
        netns_cookie: v.netns_cookie,
    }
}

impl EndpointMaps {
    pub fn open(src: &mut Source<'_>) -> Result<EndpointMaps, MapsError> {
        Ok(EndpointMaps {
            endpoints: src.map(&ENDPOINTS)?,
        })
    }

    pub fn add(&mut self, e: &Endpoint) -> Result<(), MapsError> {
        let v = EndpointValue {
            ifindex: e.ifindex,
            endpoint_id: e.endpoint_id,
            mac: e.mac,
            flags: 0,
            parent_ifindex: e.parent_ifindex,
            pad0: 0,
            netns_cookie: e.netns_cookie,
        };
        self.endpoints.insert(key(e.addr), v, 0).map_err(err(ENDPOINTS.name))
    }

    /// Remove a pod address, if it still belongs to `endpoint_id`: after a
    /// quick address reuse the entry may already be the next pod's.
    pub fn remove(&mut self, a: IpAddr, endpoint_id: u32) -> Result<bool, MapsError> {
        match lookup(&self.endpoints, &ENDPOINTS, &key(a))? {
            Some(v) if v.endpoint_id == endpoint_id => {
                self.endpoints.remove(&key(a)).map_err(err(ENDPOINTS.name))?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    pub fn get(&self, a: IpAddr) -> Result<Option<Endpoint>, MapsError> {
        Ok(lookup(&self.endpoints, &ENDPOINTS, &key(a))?.map(|v| view(a, &v)))
    }

    /// Every endpoint, by address.
    pub fn entries(&self) -> Result<Vec<Endpoint>, MapsError> {
        let mut out: Vec<Endpoint> = self
            .endpoints
            .iter()
            .map(|kv| kv.map(|(k, v)| view(ip(&k.addr), &v)))
            .collect::<Result<_, _>>()
            .map_err(err(ENDPOINTS.name))?;
        out.sort_by_key(|e| e.addr);
        Ok(out)
    }

    /// The map's size.
    pub fn capacity(&self) -> u32 {
        capacity(&self.endpoints)
    }
}
