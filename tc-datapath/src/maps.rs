//! Typed access to the datapath maps, and the map writes that make up a
//! Service: backends first, then the slots, then the service entry that
//! makes them reachable, so a packet never sees a slot without its backend.

use crate::layout::*;
use aya::Ebpf;
use aya::maps::lpm_trie::{Key, LpmTrie};
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

/// Write `v` under `k` unless it is there already: 1 when written.
fn put<K: aya::Pod, V: aya::Pod + PartialEq>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    k: K,
    v: V,
) -> Result<usize, MapsError> {
    if map.get(&k, 0).is_ok_and(|old| old == v) {
        return Ok(0);
    }
    map.insert(k, v, 0).map_err(err(name))?;
    Ok(1)
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

/// A removal of what is not there is done. aya reports a missing key as
/// `KeyNotFound` for tries and as the syscall's ENOENT for hashes.
fn ignore_missing(r: Result<(), MapError>, name: &'static str) -> Result<(), MapsError> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(err(name)(e)),
    }
}

/// A removal's outcome: true when the entry was there.
fn removed(r: Result<(), MapError>, name: &'static str) -> Result<bool, MapsError> {
    let there = r.is_ok();
    ignore_missing(r, name).map(|()| there)
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

fn filter_count(filter: &Array<MapData, u64>, name: &'static str, ip: IpAddr) -> Result<u8, MapsError> {
    let slot = vip_slot(&addr(ip));
    let w = filter.get(&(slot / 8), 0).map_err(err(name))?;
    Ok((w >> ((slot % 8) * 8)) as u8)
}

pub struct Maps {
    pub services: HashMap<MapData, SvcKey, SvcValue>,
    /// Counters of VIPs per hash slot, 8 to a word (see layout.h).
    pub vip_filter: Array<MapData, u64>,
    pub backends: HashMap<MapData, u32, BackendValue>,
    pub revnat: HashMap<MapData, u32, RevNatValue>,
    pub maglev: HashMap<MapData, MaglevKey, MaglevValue>,
    /// The table size the programs were loaded with.
    pub maglev_m: u32,
    pub ct: HashMap<MapData, CtKey, CtValue>,
    pub endpoints: HashMap<MapData, EndpointKey, EndpointValue>,
    /// Pod address -> identity, cluster-wide.
    pub ipcache: HashMap<MapData, EndpointKey, IpcacheValue>,
    /// CIDR -> identity (longest prefix wins).
    pub cidr: LpmTrie<MapData, Addr, IpcacheValue>,
    /// Endpoint id -> its policy state.
    pub ep_policy: HashMap<MapData, u32, EpPolicyValue>,
    /// The allow rules of every endpoint: one port, every port, every
    /// protocol.
    pub policy: HashMap<MapData, PolicyMatch, PolicyValue>,
    /// Port-range blocks of the allow rules.
    pub policy_ranges: LpmTrie<MapData, PolicyMatch, PolicyValue>,
    /// Names of identities and policies, for the tools.
    pub names: HashMap<MapData, NameKey, NameValue>,
    pub metrics: PerCpuArray<MapData, MetricsValue>,
    pub info: Array<MapData, DpInfo>,
}

/// One allow rule of an endpoint, as the datapath holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    pub dir: Direction,
    /// The peer's identity; `ID_ANY` = anyone.
    pub identity: u32,
    /// 0 = every protocol (and then every port).
    pub proto: u8,
    /// Inclusive port range; `None` = every port.
    pub ports: Option<(u16, u16)>,
    /// The policy the rule comes from (named in `sl_names`).
    pub policy: u32,
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
    /// The entries that make up this rule for `endpoint_id`, as (prefix
    /// length, match): one, or for a port range the aligned power-of-two
    /// blocks that tile it exactly (at most 30 for 16-bit ports). See
    /// `entry_kind` for where each goes.
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
            (_, Some((lo, hi))) => port_blocks(lo, hi)
                .into_iter()
                .map(|(port, bits)| {
                    Key::new(
                        POLICY_BITS_ANY_PORT + bits,
                        PolicyMatch {
                            port: port.to_be(),
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
}

/// The aligned blocks (first port, prefix bits) that cover `lo..=hi` exactly.
pub fn port_blocks(lo: u16, hi: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
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
        out.push((lo as u16, 16 - size.trailing_zeros()));
        lo += size;
    }
    out
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
    /// kept for its connections, given no new ones by this frontend.
    pub backends: Vec<(u32, IpAddr, u16, bool)>,
    /// Active backends whose entry must still say terminating: a backend
    /// entry is shared by every frontend with that address, port and
    /// protocol, and one of the others holds it as terminating. Its state
    /// only decides stickiness (affinity, a reused port's backend), so the
    /// shared entry takes the safe side; this frontend's slots keep it.
    pub draining: Vec<u32>,
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
            backends: take!("sl_backends", HashMap<MapData, u32, BackendValue>),
            revnat: take!("sl_revnat", HashMap<MapData, u32, RevNatValue>),
            maglev: take!("sl_maglev", HashMap<MapData, MaglevKey, MaglevValue>),
            maglev_m,
            ct: take!("sl_ct", HashMap<MapData, CtKey, CtValue>),
            endpoints: take!("sl_endpoints", HashMap<MapData, EndpointKey, EndpointValue>),
            ipcache: take!("sl_ipcache", HashMap<MapData, EndpointKey, IpcacheValue>),
            cidr: take!("sl_cidr", LpmTrie<MapData, Addr, IpcacheValue>),
            ep_policy: take!("sl_ep_policy", HashMap<MapData, u32, EpPolicyValue>),
            policy: take!("sl_policy", HashMap<MapData, PolicyMatch, PolicyValue>),
            policy_ranges: take!("sl_policy_ranges", LpmTrie<MapData, PolicyMatch, PolicyValue>),
            names: take!("sl_names", HashMap<MapData, NameKey, NameValue>),
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
            backends: open!("sl_backends", HashMap, HashMap<MapData, u32, BackendValue>, u32, BackendValue),
            revnat: open!("sl_revnat", HashMap, HashMap<MapData, u32, RevNatValue>, u32, RevNatValue),
            maglev: open!("sl_maglev", HashMap, HashMap<MapData, MaglevKey, MaglevValue>, MaglevKey, MaglevValue),
            maglev_m: maglev_m.unwrap_or(0),
            ct: open!("sl_ct", LruHashMap, HashMap<MapData, CtKey, CtValue>, CtKey, CtValue),
            endpoints: open!("sl_endpoints", HashMap, HashMap<MapData, EndpointKey, EndpointValue>, EndpointKey, EndpointValue),
            ipcache: open!("sl_ipcache", HashMap, HashMap<MapData, EndpointKey, IpcacheValue>, EndpointKey, IpcacheValue),
            cidr: open!("sl_cidr", LpmTrie, LpmTrie<MapData, Addr, IpcacheValue>, Key<Addr>, IpcacheValue),
            ep_policy: open!("sl_ep_policy", HashMap, HashMap<MapData, u32, EpPolicyValue>, u32, EpPolicyValue),
            policy: open!("sl_policy", HashMap, HashMap<MapData, PolicyMatch, PolicyValue>, PolicyMatch, PolicyValue),
            policy_ranges: open!("sl_policy_ranges", LpmTrie, LpmTrie<MapData, PolicyMatch, PolicyValue>, Key<PolicyMatch>, PolicyValue),
            names: open!("sl_names", HashMap, HashMap<MapData, NameKey, NameValue>, NameKey, NameValue),
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

    /// Write a Service port: only the entries that differ from what the
    /// maps hold, so that writing what is already there writes nothing.
    /// Returns how many entries were written or removed.
    /// Set the state of backend `id`, already written (a frontend sharing
    /// it changed its view); returns the entries written.
    pub fn set_backend_state(&mut self, id: u32, active: bool) -> Result<usize, MapsError> {
        let Ok(mut v) = self.backends.get(&id, 0) else {
            return Ok(0);
        };
        v.state = if active { BACKEND_ACTIVE } else { BACKEND_TERMINATING };
        put(&mut self.backends, "sl_backends", id, v)
    }

    pub fn upsert_service(&mut self, s: &ServiceSpec) -> Result<usize, MapsError> {
        let name = format!("{}:{}/{}", s.vip, s.port, s.proto);
        if s.backends.iter().any(|b| b.1.is_ipv4() != s.vip.is_ipv4()) {
            return Err(MapsError::Service(name, "backends must be of the VIP's family".into()));
        }
        let mut writes = 0;
        // A new VIP enters the filter before anything can be found under
        // it, so that no packet to it passes untranslated.
        if self.services.get(&SvcKey::vip_marker(s.vip), 0).is_err() {
            filter_step(&mut self.vip_filter, "sl_vip_filter", s.vip, true)?;
            writes += 1;
        }
        for (id, ip, port, active) in &s.backends {
            let v = BackendValue {
                addr: addr(*ip),
                port: port.to_be(),
                proto: s.proto,
                state: if *active && !s.draining.contains(id) {
                    BACKEND_ACTIVE
                } else {
                    BACKEND_TERMINATING
                },
            };
            writes += put(&mut self.backends, "sl_backends", *id, v)?;
        }
        let active: Vec<u32> = s.backends.iter().filter(|b| b.3).map(|b| b.0).collect();
        for (i, id) in active.iter().enumerate() {
            let slot = SvcValue {
                backend_id: *id,
                ..Default::default()
            };
            let k = SvcKey::new(s.vip, s.port, s.proto, i as u16 + 1);
            writes += put(&mut self.services, "sl_services", k, slot)?;
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
                writes += put(&mut self.maglev, "sl_maglev", k, v)?;
            }
        }
        let rn = RevNatValue {
            addr: addr(s.vip),
            port: s.port.to_be(),
            pad0: 0,
        };
        writes += put(&mut self.revnat, "sl_revnat", s.rev_nat_id, rn)?;
        let reject = if s.reject { SVC_F_REJECT } else { 0 };
        let master = SvcValue {
            count: active.len() as u16,
            flags: reject,
            rev_nat_id: s.rev_nat_id,
            algorithm: s.algorithm,
            affinity_timeout: s.affinity_timeout_secs,
            ..Default::default()
        };
        let k = SvcKey::new(s.vip, s.port, s.proto, 0);
        writes += put(&mut self.services, "sl_services", k, master)?;
        // One marker per VIP: the port written last decides whether
        // unknown ports are rejected (the agent writes one setting per node).
        let marker = SvcValue {
            flags: SVC_F_VIP_MARKER | reject,
            ..Default::default()
        };
        writes += put(&mut self.services, "sl_services", SvcKey::vip_marker(s.vip), marker)?;
        // Slots beyond the new count belong to nobody now.
        let mut slot = active.len() as u16 + 1;
        while self.services.get(&SvcKey::new(s.vip, s.port, s.proto, slot), 0).is_ok() {
            self.services
                .remove(&SvcKey::new(s.vip, s.port, s.proto, slot))
                .map_err(err("sl_services"))?;
            writes += 1;
            slot += 1;
        }
        Ok(writes)
    }

    /// Remove a backend no Service uses any more (its connections, if
    /// any, end with it); false when it was not there.
    pub fn remove_backend(&mut self, id: u32) -> Result<bool, MapsError> {
        removed(self.backends.remove(&id), "sl_backends")
    }

    /// The VIP filter's counter for `vip` (what the tests check).
    pub fn vip_filter_count(&self, vip: IpAddr) -> Result<u8, MapsError> {
        filter_count(&self.vip_filter, "sl_vip_filter", vip)
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
    /// service uses. Existing conntrack entries age out. Reads every
    /// service to learn what else uses the VIP and the backends (the
    /// operator CLI's way; the agent knows and calls `remove_frontend`).
    pub fn delete_service(&mut self, vip: IpAddr, port: u16, proto: u8) -> Result<bool, MapsError> {
        let all = self.services()?;
        let Some(me) = all.iter().find(|s| s.vip == vip && s.port == port && s.proto == proto) else {
            return Ok(false);
        };
        let others: Vec<&ServiceView> = all.iter().filter(|s| !std::ptr::eq(*s, me)).collect();
        self.remove_frontend(vip, port, proto, !others.iter().any(|s| s.vip == vip))?;
        for id in &me.active {
            if others.iter().any(|s| s.active.contains(id)) {
                continue;
            }
            let _ = self.backends.remove(id);
        }
        Ok(true)
    }

    /// Remove a service port's own entries (not its backends): the service
    /// entry first, then its slots, Maglev table and reverse-NAT entry, and
    /// the VIP's marker and filter count when `last_of_vip`. Returns how
    /// many entries went (0: there was no such port).
    pub fn remove_frontend(
        &mut self,
        vip: IpAddr,
        port: u16,
        proto: u8,
        last_of_vip: bool,
    ) -> Result<usize, MapsError> {
        let master_key = SvcKey::new(vip, port, proto, 0);
        let Ok(master) = self.services.get(&master_key, 0) else {
            return Ok(0);
        };
        if master.flags & SVC_F_VIP_MARKER != 0 {
            return Ok(0);
        }
        self.services.remove(&master_key).map_err(err("sl_services"))?;
        let mut removed = 1;
        for slot in 1..=master.count {
            removed += usize::from(self.services.remove(&SvcKey::new(vip, port, proto, slot)).is_ok());
        }
        let chunks = (self.maglev_m as usize).div_ceil(MAGLEV_CHUNK) as u32;
        for chunk in 0..chunks {
            let k = MaglevKey {
                rev_nat_id: master.rev_nat_id,
                chunk,
            };
            removed += usize::from(self.maglev.remove(&k).is_ok());
        }
        removed += usize::from(self.revnat.remove(&master.rev_nat_id).is_ok());
        if last_of_vip && self.services.remove(&SvcKey::vip_marker(vip)).is_ok() {
            filter_step(&mut self.vip_filter, "sl_vip_filter", vip, false)?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Every conntrack entry.
    pub fn conntrack(&self) -> Result<Vec<(CtKey, CtValue)>, MapsError> {
        self.ct.iter().collect::<Result<_, _>>().map_err(err("sl_ct"))
    }

    /// The conntrack table's size (entries it holds at most).
    pub fn conntrack_capacity(&self) -> u32 {
        use aya::maps::IterableMap;
        self.ct.map().info().map_or(0, |i| i.max_entries())
    }

    /// The endpoint map's size.
    pub fn endpoint_capacity(&self) -> u32 {
        use aya::maps::IterableMap;
        self.endpoints.map().info().map_or(0, |i| i.max_entries())
    }

    /// The backend with this id, as (address, port).
    pub fn backend(&self, id: u32) -> Option<(IpAddr, u16)> {
        self.backends
            .get(&id, 0)
            .ok()
            .map(|b| (ip(&b.addr), u16::from_be(b.port)))
    }

    /// Remove one conntrack entry; false when it was not there.
    pub fn remove_conntrack(&mut self, k: &CtKey) -> Result<bool, MapsError> {
        removed(self.ct.remove(k), "sl_ct")
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

    // ---- network policy ----

    /// A pod address's identity (cluster-wide).
    pub fn set_identity(&mut self, ip: IpAddr, identity: u32) -> Result<(), MapsError> {
        let v = IpcacheValue { identity, pad0: 0 };
        self.ipcache
            .insert(EndpointKey { addr: addr(ip) }, v, 0)
            .map_err(err("sl_ipcache"))
    }

    pub fn remove_identity(&mut self, ip: IpAddr) -> Result<(), MapsError> {
        ignore_missing(self.ipcache.remove(&EndpointKey { addr: addr(ip) }), "sl_ipcache")
    }

    /// Every (address, identity) of the ipcache.
    pub fn identities(&self) -> Result<Vec<(IpAddr, u32)>, MapsError> {
        let mut out: Vec<(IpAddr, u32)> = self
            .ipcache
            .iter()
            .map(|kv| kv.map(|(k, v)| (ip(&k.addr), v.identity)))
            .collect::<Result<_, _>>()
            .map_err(err("sl_ipcache"))?;
        out.sort();
        Ok(out)
    }

    /// A CIDR's identity. `prefix` is the family's own length (0..=32 for IPv4).
    pub fn set_cidr(&mut self, net: IpAddr, prefix: u8, identity: u32) -> Result<(), MapsError> {
        let v = IpcacheValue { identity, pad0: 0 };
        self.cidr.insert(&cidr_key(net, prefix), v, 0).map_err(err("sl_cidr"))
    }

    pub fn remove_cidr(&mut self, net: IpAddr, prefix: u8) -> Result<(), MapsError> {
        ignore_missing(self.cidr.remove(&cidr_key(net, prefix)), "sl_cidr")
    }

    /// Every (network, prefix, identity) of the CIDR trie.
    pub fn cidrs(&self) -> Result<Vec<(IpAddr, u8, u32)>, MapsError> {
        let mut out = Vec::new();
        for kv in self.cidr.iter() {
            let (k, v) = kv.map_err(err("sl_cidr"))?;
            let a = ip(&k.data());
            let len = if a.is_ipv4() {
                k.prefix_len() - 96
            } else {
                k.prefix_len()
            };
            out.push((a, len as u8, v.identity));
        }
        out.sort();
        Ok(out)
    }

    pub fn set_endpoint_policy(&mut self, endpoint_id: u32, v: EpPolicyValue) -> Result<(), MapsError> {
        self.ep_policy.insert(endpoint_id, v, 0).map_err(err("sl_ep_policy"))
    }

    pub fn remove_endpoint_policy(&mut self, endpoint_id: u32) -> Result<(), MapsError> {
        ignore_missing(self.ep_policy.remove(&endpoint_id), "sl_ep_policy")
    }

    pub fn endpoint_policy(&self, endpoint_id: u32) -> Result<Option<EpPolicyValue>, MapsError> {
        match self.ep_policy.get(&endpoint_id, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(err("sl_ep_policy")(e)),
        }
    }

    /// Every endpoint's policy state.
    pub fn endpoint_policies(&self) -> Result<Vec<(u32, EpPolicyValue)>, MapsError> {
        let mut out: Vec<(u32, EpPolicyValue)> = self
            .ep_policy
            .iter()
            .collect::<Result<_, _>>()
            .map_err(err("sl_ep_policy"))?;
        out.sort_by_key(|e| e.0);
        Ok(out)
    }

    /// Write the entries of `r` (the endpoint's `kinds` are the caller's:
    /// see `Rule::kinds`).
    pub fn insert_rule(&mut self, endpoint_id: u32, r: &Rule) -> Result<(), MapsError> {
        let v = PolicyValue {
            policy: r.policy,
            pad0: 0,
        };
        for k in r.keys(endpoint_id) {
            self.set_rule_entry(k.prefix_len(), k.data(), v)?;
        }
        Ok(())
    }

    pub fn remove_rule(&mut self, endpoint_id: u32, r: &Rule) -> Result<(), MapsError> {
        for k in r.keys(endpoint_id) {
            self.remove_rule_entry(k.prefix_len(), k.data())?;
        }
        Ok(())
    }

    /// One rule entry as `rule_entries` lists it: a range block goes to the
    /// range trie, anything else to the hash.
    pub fn set_rule_entry(&mut self, prefix_len: u32, m: PolicyMatch, v: PolicyValue) -> Result<(), MapsError> {
        if entry_kind(prefix_len) == RULE_K_RANGE {
            self.policy_ranges
                .insert(&Key::new(prefix_len, m), v, 0)
                .map_err(err("sl_policy_ranges"))
        } else {
            self.policy.insert(m, v, 0).map_err(err("sl_policy"))
        }
    }

    pub fn remove_rule_entry(&mut self, prefix_len: u32, m: PolicyMatch) -> Result<(), MapsError> {
        if entry_kind(prefix_len) == RULE_K_RANGE {
            ignore_missing(self.policy_ranges.remove(&Key::new(prefix_len, m)), "sl_policy_ranges")
        } else {
            ignore_missing(self.policy.remove(&m), "sl_policy")
        }
    }

    /// The rule entries (of one endpoint, or all), as (prefix length,
    /// match, value), sorted; the hash's keys get the length their
    /// wildcards stand for.
    pub fn rule_entries(&self, endpoint_id: Option<u32>) -> Result<Vec<(u32, PolicyMatch, PolicyValue)>, MapsError> {
        let mine = |m: &PolicyMatch| endpoint_id.is_none_or(|e| e == m.endpoint_id);
        let mut out = Vec::new();
        for kv in self.policy.iter() {
            let (m, v) = kv.map_err(err("sl_policy"))?;
            let len = match (m.proto, m.port) {
                (0, _) => POLICY_BITS_ANY_PROTO,
                (_, 0) => POLICY_BITS_ANY_PORT,
                _ => POLICY_BITS_EXACT,
            };
            if mine(&m) {
                out.push((len, m, v));
            }
        }
        for kv in self.policy_ranges.iter() {
            let (k, v) = kv.map_err(err("sl_policy_ranges"))?;
            let m = k.data();
            if mine(&m) {
                out.push((k.prefix_len(), m, v));
            }
        }
        out.sort_by_key(|e| (e.1, e.0));
        Ok(out)
    }

    pub fn set_name(&mut self, kind: u32, id: u32, name: &str) -> Result<(), MapsError> {
        self.names
            .insert(NameKey { kind, id }, NameValue::new(name), 0)
            .map_err(err("sl_names"))
    }

    pub fn remove_name(&mut self, kind: u32, id: u32) -> Result<(), MapsError> {
        ignore_missing(self.names.remove(&NameKey { kind, id }), "sl_names")
    }

    pub fn name(&self, kind: u32, id: u32) -> Option<String> {
        self.names
            .get(&NameKey { kind, id }, 0)
            .ok()
            .map(|v| v.to_string_lossy())
    }

    /// Every (key, name) of the names map.
    pub fn names(&self) -> Result<Vec<(NameKey, String)>, MapsError> {
        self.names
            .iter()
            .map(|kv| kv.map(|(k, v)| (k, v.to_string_lossy())))
            .collect::<Result<_, _>>()
            .map_err(err("sl_names"))
    }

    pub fn count(&self, reason: Reason, dir: Direction) -> Result<u64, MapsError> {
        Ok(self
            .metrics()?
            .into_iter()
            .find(|m| m.0 == reason && m.1 == dir)
            .map_or(0, |m| m.2))
    }
}

/// The flow-event ring of a node's pinned maps. It has one reader: the
/// agent. Events are submitted without a wakeup, so the reader polls.
pub struct Events {
    ring: aya::maps::RingBuf<MapData>,
}

impl Events {
    pub fn open_pinned(versioned: &Path) -> Result<Events, MapsError> {
        let path = versioned.join("maps").join("sl_events");
        let pinned = |source| MapsError::Pinned {
            path: path.display().to_string(),
            source,
        };
        let data = MapData::from_pin(&path).map_err(pinned)?;
        let ring = aya::maps::RingBuf::try_from(Map::RingBuf(data)).map_err(err("sl_events"))?;
        Ok(Events { ring })
    }

    /// Every event on the ring now.
    pub fn drain(&mut self) -> Vec<FlowEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            out.extend(FlowEvent::from_bytes(&item));
        }
        out
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
            let blocks = port_blocks(lo, hi);
            prop_assert!(blocks.len() <= 30);
            let mut next = u32::from(lo);
            for (start, bits) in blocks {
                let size = 1u32 << (16 - bits);
                prop_assert_eq!(u32::from(start), next);
                prop_assert_eq!(u32::from(start) % size, 0);
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
        let exact = r(6, Some((80, 80))).keys(7);
        assert_eq!((exact.len(), exact[0].prefix_len()), (1, POLICY_BITS_EXACT));
        assert_eq!(exact[0].data().port, 80u16.to_be());
        // 8000-8080 = 8000-8063 (64 ports), 8064-8079 (16), 8080.
        assert_eq!(port_blocks(8000, 8080), vec![(8000, 10), (8064, 12), (8080, 16)]);
        assert_eq!(port_blocks(0, 65535), vec![(0, 0)]);
    }
}
