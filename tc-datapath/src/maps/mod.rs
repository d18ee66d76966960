//! Typed access to the datapath's maps, one module per family (cilium's
//! `pkg/maps` is the model): [`lb`] (Services, backends, the VIP filter,
//! Maglev and affinity), [`ct`] (conntrack and its collection),
//! [`endpoints`] (the node's pods), [`policy`] (identities, CIDRs, rules),
//! [`uplink`] (traffic from outside: NAT, uplink addresses, source ranges)
//! and [`observe`] (metrics, names, program info, flow events).
//!
//! Every map is listed once, in [`ALL`]: the loader pins from that list,
//! each family takes or opens its maps by their entry, and the pinned
//! maps' key and value sizes are checked against it. A family can be
//! opened alone (the CNI binary needs two of them per ADD, not seventeen).

pub mod ct;
pub mod endpoints;
pub mod hostport;
pub mod lb;
pub mod maglev;
pub mod observe;
pub mod policy;
pub mod uplink;

pub use ct::CtMaps;
pub use endpoints::EndpointMaps;
pub use hostport::HostPortMaps;
pub use lb::LbMaps;
pub use observe::ObserveMaps;
pub use policy::PolicyMaps;
pub use uplink::UplinkMaps;

use crate::layout::*;
use aya::Ebpf;
use aya::maps::{HashMap, Map, MapData, MapError};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error(transparent)]
    Raw(#[from] crate::raw_map::RawMapError),
    #[error("map {0} is missing from the object")]
    Missing(&'static str),
    #[error("service {service}: {problem}")]
    Service { service: String, problem: String },
    /// No program info yet, or a map not pinned yet: nothing loaded there,
    /// or a load under way (its maps are pinned one by one, then the info
    /// is written).
    #[error("{dir}: no sluice datapath is loaded there (yet)")]
    NotLoaded { dir: String },
    #[error("map sl_info holds no readable configuration: {0}")]
    Info(String),
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

/// One map of the datapath: its name (in `bpf/maps.h` and under bpffs) and
/// the sizes of its key and value in this build's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapDef {
    pub name: &'static str,
    pub key_size: u32,
    pub value_size: u32,
}

macro_rules! map_defs {
    ($($(#[$doc:meta])* $id:ident = $name:literal: $k:ty => $v:ty;)*) => {
        $($(#[$doc])* pub const $id: MapDef = MapDef {
            name: $name,
            key_size: size_of::<$k>() as u32,
            value_size: size_of::<$v>() as u32,
        };)*
        /// Every map of the object, each once.
        pub const ALL: &[MapDef] = &[$($id),*];
    };
}

map_defs! {
    /// Service ports and their backend slots, and one marker per VIP.
    SERVICES = "sl_services": SvcKey => SvcValue;
    /// Counters of VIPs per hash slot, 8 to a word.
    VIP_FILTER = "sl_vip_filter": u32 => u64;
    BACKENDS = "sl_backends": u32 => BackendValue;
    REVNAT = "sl_revnat": u32 => RevNatValue;
    MAGLEV = "sl_maglev": MaglevKey => MaglevValue;
    AFFINITY = "sl_affinity": AffinityKey => AffinityValue;
    CT = "sl_ct": CtKey => CtValue;
    /// What the cgroup hooks gave each socket, by socket cookie.
    SOCK_REV = "sl_sock_svc": u64 => SockRev;
    /// Each pod's share of the conntrack table.
    CT_PODS = "sl_ct_pods": u32 => CtPodValue;
    /// The first fragment's ports, for the rest of its datagram.
    FRAGS = "sl_frags": FragKey => FragValue;
    ENDPOINTS = "sl_endpoints": EndpointKey => EndpointValue;
    /// Pod address -> identity, cluster-wide.
    IPCACHE = "sl_ipcache": EndpointKey => IpcacheValue;
    /// CIDR -> identity (longest prefix wins).
    CIDR = "sl_cidr": CidrKey => IpcacheValue;
    /// Endpoint id -> its policy state.
    EP_POLICY = "sl_ep_policy": u32 => EpPolicyValue;
    /// Allow rules for one port, every port or every protocol.
    POLICY = "sl_policy": PolicyMatch => PolicyValue;
    /// Port-range blocks of allow rules.
    POLICY_RANGES = "sl_policy_ranges": PolicyKey => PolicyValue;
    /// Allowed verdicts of new flows, per CPU (only the programs write it).
    VERDICTS = "sl_verdicts": u32 => VerdictSlot;
    /// The policy generation: when a policy map was last written.
    POLICY_GEN = "sl_policy_gen": u32 => u64;
    /// Connections from outside, both directions, at the uplinks: those
    /// the client has answered.
    NAT = "sl_nat": CtKey => NatValue;
    /// The same, not answered yet (a table of their own: a flood of them
    /// cannot evict the established ones).
    NAT_NEW = "sl_nat_new": CtKey => NatValue;
    /// SNAT ports held past their connection's close (the reply's key ->
    /// when the hold ends, CLOCK_MONOTONIC ns).
    SNAT_HELD = "sl_snat_held": CtKey => u64;
    /// The node's uplinks and their SNAT addresses.
    UPLINKS = "sl_uplinks": u32 => UplinkValue;
    /// Pods' hostPorts on the node's addresses (the CNI binary writes them).
    HOSTPORTS = "sl_hostports": HostportKey => HostportValue;
    /// loadBalancerSourceRanges, by frontend.
    LB_SOURCES = "sl_lb_sources": LbSourceKey => u32;
    /// Names of identities and policies, for the tools.
    NAMES = "sl_names": NameKey => NameValue;
    /// The flow-event ring (no key, no value).
    EVENTS = "sl_events": () => ();
    METRICS = "sl_metrics": u32 => MetricsValue;
    /// What the attached programs were loaded with.
    INFO = "sl_info": u32 => DpInfo;
}

/// Where a map is pinned, under a versioned directory (`<root>/v<N>`).
pub fn pin_path(versioned: &Path, def: &MapDef) -> PathBuf {
    versioned.join("maps").join(def.name)
}

/// Where a family's maps come from: a freshly loaded object (its maps are
/// taken out of it; the programs keep their own references), or the pins
/// of a versioned directory.
pub enum Source<'a> {
    Object(&'a mut Ebpf),
    Pinned(PathBuf),
}

impl Source<'_> {
    /// The pins under a versioned directory (`<root>/v<N>`).
    pub fn pinned(versioned: &Path) -> Source<'static> {
        Source::Pinned(versioned.to_path_buf())
    }

    /// One map, as the aya type `T`; a pinned one must have this build's
    /// key and value sizes (aya would reuse a pin of another layout).
    pub fn map<T: TryFrom<Map, Error = MapError>>(&mut self, def: &MapDef) -> Result<T, MapsError> {
        let map = match self {
            Source::Object(ebpf) => ebpf.take_map(def.name).ok_or(MapsError::Missing(def.name))?,
            Source::Pinned(versioned) => {
                let path = pin_path(versioned, def);
                let pinned = |source| MapsError::Pinned {
                    path: path.display().to_string(),
                    source,
                };
                let data = match MapData::from_pin(&path) {
                    // A load under way has not pinned this one yet.
                    Err(_) if !path.exists() => {
                        return Err(MapsError::NotLoaded {
                            dir: versioned.display().to_string(),
                        });
                    }
                    r => r.map_err(pinned)?,
                };
                let info = data.info().map_err(pinned)?;
                let got = (info.key_size(), info.value_size());
                let want = (def.key_size, def.value_size);
                if got != want {
                    return Err(MapsError::Layout {
                        path: path.display().to_string(),
                        got,
                        want,
                    });
                }
                Map::from_map_data(data).map_err(pinned)?
            }
        };
        T::try_from(map).map_err(err(def.name))
    }
}

/// Every map, by family.
pub struct Maps {
    lb: LbMaps,
    ct: CtMaps,
    endpoints: EndpointMaps,
    policy: PolicyMaps,
    uplink: UplinkMaps,
    hostports: HostPortMaps,
    observe: ObserveMaps,
}

impl Maps {
    /// Take every map out of a loaded object; `maglev_m` is the table size
    /// it was loaded with.
    pub fn take(ebpf: &mut Ebpf, maglev_m: u32) -> Result<Maps, MapsError> {
        Maps::open(&mut Source::Object(ebpf), maglev_m)
    }

    /// The maps pinned under a versioned directory (`<root>/v<N>`), with the
    /// Maglev table size the attached programs were loaded with.
    pub fn open_pinned(versioned: &Path) -> Result<Maps, MapsError> {
        let mut src = Source::pinned(versioned);
        let observe = ObserveMaps::open(&mut src)?;
        let maglev_m = observe.loaded_config(versioned)?.maglev_table_size;
        Ok(Maps {
            lb: LbMaps::open(&mut src, maglev_m)?,
            ct: CtMaps::open(&mut src)?,
            endpoints: EndpointMaps::open(&mut src)?,
            policy: PolicyMaps::open(&mut src)?,
            uplink: UplinkMaps::open(&mut src)?,
            hostports: HostPortMaps::open(&mut src)?,
            observe,
        })
    }

    fn open(src: &mut Source<'_>, maglev_m: u32) -> Result<Maps, MapsError> {
        Ok(Maps {
            lb: LbMaps::open(src, maglev_m)?,
            ct: CtMaps::open(src)?,
            endpoints: EndpointMaps::open(src)?,
            policy: PolicyMaps::open(src)?,
            uplink: UplinkMaps::open(src)?,
            hostports: HostPortMaps::open(src)?,
            observe: ObserveMaps::open(src)?,
        })
    }

    pub fn lb(&self) -> &LbMaps {
        &self.lb
    }
    pub fn lb_mut(&mut self) -> &mut LbMaps {
        &mut self.lb
    }
    pub fn ct(&self) -> &CtMaps {
        &self.ct
    }
    pub fn ct_mut(&mut self) -> &mut CtMaps {
        &mut self.ct
    }
    pub fn endpoints(&self) -> &EndpointMaps {
        &self.endpoints
    }
    pub fn endpoints_mut(&mut self) -> &mut EndpointMaps {
        &mut self.endpoints
    }
    pub fn policy(&self) -> &PolicyMaps {
        &self.policy
    }
    pub fn policy_mut(&mut self) -> &mut PolicyMaps {
        &mut self.policy
    }
    pub fn uplink(&self) -> &UplinkMaps {
        &self.uplink
    }
    pub fn uplink_mut(&mut self) -> &mut UplinkMaps {
        &mut self.uplink
    }
    pub fn hostports(&self) -> &HostPortMaps {
        &self.hostports
    }
    pub fn hostports_mut(&mut self) -> &mut HostPortMaps {
        &mut self.hostports
    }
    pub fn observe(&self) -> &ObserveMaps {
        &self.observe
    }
    pub fn observe_mut(&mut self) -> &mut ObserveMaps {
        &mut self.observe
    }
}

// ---- helpers shared by the families ----

fn err(name: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Map { name, source }
}

/// Write `v` under `k` unless it is there already: 1 when written.
fn put<K: aya::Pod, V: aya::Pod + PartialEq>(
    map: &mut HashMap<MapData, K, V>,
    def: &MapDef,
    k: K,
    v: V,
) -> Result<usize, MapsError> {
    if map.get(&k, 0).is_ok_and(|old| old == v) {
        return Ok(0);
    }
    map.insert(k, v, 0).map_err(err(def.name))?;
    Ok(1)
}

/// The value under `k`, or None when there is none.
fn lookup<K: aya::Pod, V: aya::Pod>(map: &HashMap<MapData, K, V>, def: &MapDef, k: &K) -> Result<Option<V>, MapsError> {
    match map.get(k, 0) {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(err(def.name)(e)),
    }
}

/// A removal of what is not there is done. aya reports a missing key as
/// `KeyNotFound` for tries and as the syscall's ENOENT for hashes.
fn ignore_missing(r: Result<(), MapError>, def: &MapDef) -> Result<(), MapsError> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(err(def.name)(e)),
    }
}

/// A removal's outcome: true when the entry was there.
fn removed(r: Result<(), MapError>, def: &MapDef) -> Result<bool, MapsError> {
    let there = r.is_ok();
    ignore_missing(r, def).map(|()| there)
}

/// Every (key, value) of a hash, sorted by key.
fn entries<K: aya::Pod + Ord + Copy, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    def: &MapDef,
) -> Result<Vec<(K, V)>, MapsError> {
    let mut out: Vec<(K, V)> = map.iter().collect::<Result<_, _>>().map_err(err(def.name))?;
    out.sort_by_key(|e| e.0);
    Ok(out)
}

/// A map's size (the entries it holds at most).
fn capacity<K: aya::Pod, V: aya::Pod>(map: &HashMap<MapData, K, V>) -> u32 {
    use aya::maps::IterableMap;
    map.map().info().map_or(0, |i| i.max_entries())
}

/// The kernel's own accounting of a map's memory (`memlock` in its fdinfo:
/// the bucket array plus the elements that exist, for maps that do not
/// preallocate).
fn memlock(map: &MapData, def: &MapDef) -> Result<u64, MapsError> {
    use std::os::fd::{AsFd, AsRawFd};
    let fd = map.fd().as_fd().as_raw_fd();
    let bad = |e: std::io::Error| MapsError::Map {
        name: def.name,
        source: MapError::SyscallError(aya::sys::SyscallError {
            call: "read fdinfo",
            io_error: e,
        }),
    };
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).map_err(bad)?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| bad(std::io::Error::other("no memlock line in the map's fdinfo")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_is_listed_once() {
        let mut names: Vec<&str> = ALL.iter().map(|d| d.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }

    /// The list and the object agree: every map the C side defines is
    /// listed, and nothing else.
    #[test]
    fn the_list_is_the_objects_maps() {
        let obj = aya_obj::Object::parse(crate::OBJECT).expect("the object parses");
        let mut in_object: Vec<&str> = obj
            .maps
            .keys()
            .map(String::as_str)
            .filter(|n| !n.starts_with('.'))
            .collect();
        in_object.sort();
        let mut listed: Vec<&str> = ALL.iter().map(|d| d.name).collect();
        listed.sort();
        assert_eq!(in_object, listed);
        for def in ALL {
            let m = &obj.maps[def.name];
            assert_eq!(
                (m.key_size(), m.value_size()),
                (def.key_size, def.value_size),
                "{}",
                def.name
            );
        }
    }
}
