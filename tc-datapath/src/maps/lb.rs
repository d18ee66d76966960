//! The load-balancing maps: Service ports and their backend slots, the
//! backends, reverse NAT, Maglev tables, ClientIP affinity and the VIP
//! filter. A Service is written backends first, then its slots, then the
//! service entry that makes them reachable, so a packet never sees a slot
//! without its backend. A Service with at most `SVC_INLINE` backends taking
//! new connections has no slots: its service entry carries them.

use super::{AFFINITY, BACKENDS, MAGLEV, REVNAT, SERVICES, VIP_FILTER};
use super::{MapsError, Source, err, lookup, put, removed};
use crate::layout::*;
use aya::maps::{Array, HashMap, MapData};
use std::net::IpAddr;

/// How a Service port picks a backend for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Algorithm {
    #[default]
    Random,
    /// Consistent hashing: the same flow goes to the same backend on every
    /// node, with no conntrack entry needed.
    Maglev,
}

impl Algorithm {
    fn code(self) -> u8 {
        match self {
            Algorithm::Random => SVC_ALG_RANDOM,
            Algorithm::Maglev => SVC_ALG_MAGLEV,
        }
    }

    fn from_code(c: u8) -> Algorithm {
        if c == SVC_ALG_MAGLEV {
            Algorithm::Maglev
        } else {
            Algorithm::Random
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Random => "random",
            Algorithm::Maglev => "maglev",
        }
    }
}

/// One backend of a Service port as the writer gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
    /// Takes new connections; a terminating backend keeps its own and gets
    /// none from this frontend.
    pub active: bool,
}

/// A Service port as the datapath sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub rev_nat_id: u32,
    pub algorithm: Algorithm,
    pub affinity_timeout_secs: u32,
    /// Answer packets that find no backend (and, for the VIP, packets to
    /// ports it does not serve) from the VIP instead of a silent drop, so
    /// clients fail fast: TCP with a reset, UDP with ICMP port unreachable.
    pub reject: bool,
    /// The frontend is a node's address (a NodePort), not a VIP: a port it
    /// does not serve passes untouched (the kubelet, a hostNetwork server).
    pub node_address: bool,
    /// Who the frontend serves (`SVC_SCOPE_*`): an external one is read
    /// only by the uplink programs, and has no VIP marker of its own (its
    /// address is also a cluster-scope frontend's).
    pub scope: u8,
    /// Admit only the clients the source-range trie lists for its
    /// `rev_nat_id` (loadBalancerSourceRanges; external scope).
    pub source_ranges: bool,
    /// The node's own sockets may not call it: a load-balancer IP's
    /// source ranges hold none of the node's addresses (kube-proxy's rules
    /// judge the node's connections by its address).
    pub node_denied: bool,
    pub backends: Vec<Backend>,
    /// Active backends whose entry must still say terminating: a backend
    /// entry is shared by every frontend with that address, port and
    /// protocol, and one of the others holds it as terminating. Its state
    /// only decides stickiness (affinity, a reused port's backend), so the
    /// shared entry takes the safe side; this frontend's slots keep it.
    pub draining: Vec<u32>,
}

impl ServiceSpec {
    fn name(&self) -> String {
        let scope = if self.scope == SVC_SCOPE_EXTERNAL {
            " (external)"
        } else {
            ""
        };
        format!("{}:{}/{}{scope}", self.vip, self.port, proto_name(self.proto))
    }
}

/// A service port as read back from the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: u8,
    /// `SVC_SCOPE_*`.
    pub scope: u8,
    pub rev_nat_id: u32,
    pub algorithm: Algorithm,
    pub affinity_timeout_secs: u32,
    pub reject: bool,
    /// The backends taking new connections, in slot order.
    pub active: Vec<u32>,
}

/// A backend entry as read back from the maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendView {
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
    pub proto: u8,
    /// Takes new connections (`BACKEND_ACTIVE`); else terminating.
    pub active: bool,
}

/// Memory the kernel accounts to each map of the family, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbMemory {
    pub services: u64,
    pub backends: u64,
    pub revnat: u64,
    pub vip_filter: u64,
}

pub struct LbMaps {
    services: HashMap<MapData, SvcKey, SvcValue>,
    /// Counters of VIPs per hash slot, 8 to a word (see layout.h).
    vip_filter: Array<MapData, u64>,
    backends: HashMap<MapData, u32, BackendValue>,
    revnat: HashMap<MapData, u32, RevNatValue>,
    maglev: HashMap<MapData, MaglevKey, MaglevValue>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    /// The Maglev table size the programs were loaded with.
    maglev_m: u32,
}

impl LbMaps {
    pub fn open(src: &mut Source<'_>, maglev_m: u32) -> Result<LbMaps, MapsError> {
        Ok(LbMaps {
            services: src.map(&SERVICES)?,
            vip_filter: src.map(&VIP_FILTER)?,
            backends: src.map(&BACKENDS)?,
            revnat: src.map(&REVNAT)?,
            maglev: src.map(&MAGLEV)?,
            affinity: src.map(&AFFINITY)?,
            maglev_m,
        })
    }

    /// Write a Service port: only the entries that differ from what the
    /// maps hold, so that writing what is already there writes nothing.
    /// Returns how many entries were written or removed.
    pub fn upsert_service(&mut self, s: &ServiceSpec) -> Result<usize, MapsError> {
        if s.backends.iter().any(|b| b.addr.is_ipv4() != s.vip.is_ipv4()) {
            return Err(MapsError::Service {
                service: s.name(),
                problem: "backends must be of the VIP's family".into(),
            });
        }
        let mut writes = 0;
        let cluster = s.scope == SVC_SCOPE_CLUSTER;
        let master_key = SvcKey::scoped(s.vip, s.port, s.proto, 0, s.scope);
        let old = lookup(&self.services, &SERVICES, &master_key)?;
        // A new VIP enters the filter before anything can be found under
        // it, so that no packet to it passes untranslated.
        if cluster && lookup(&self.services, &SERVICES, &SvcKey::vip_marker(s.vip))?.is_none() {
            self.filter_step(s.vip, true)?;
            writes += 1;
        }
        for b in &s.backends {
            let v = BackendValue {
                addr: addr(b.addr),
                port: b.port.to_be(),
                proto: s.proto,
                state: backend_state(b.active && !s.draining.contains(&b.id)),
            };
            writes += put(&mut self.backends, &BACKENDS, b.id, v)?;
        }
        let active: Vec<&Backend> = s.backends.iter().filter(|b| b.active).collect();
        // What a frontend or a slot carries of a backend that takes new
        // connections: its sl_backends entry says active too, unless
        // another frontend holds it as terminating (`draining`).
        let entry = |b: &Backend| BackendValue {
            addr: addr(b.addr),
            port: b.port.to_be(),
            proto: s.proto,
            state: BACKEND_ACTIVE,
        };
        let inline = active.len() <= SVC_INLINE;
        let slots = if inline { 0 } else { active.len() };
        for (i, b) in active.iter().take(slots).enumerate() {
            let slot = SvcValue {
                backend_id: b.id,
                flags: SVC_F_SLOT_BACKEND,
                backend: entry(b),
                ..Default::default()
            };
            let k = SvcKey::scoped(s.vip, s.port, s.proto, i as u16 + 1, s.scope);
            writes += put(&mut self.services, &SERVICES, k, slot)?;
        }
        if s.algorithm == Algorithm::Maglev && !active.is_empty() {
            writes += self.write_maglev(s.rev_nat_id, &active)?;
        }
        let rn = RevNatValue {
            addr: addr(s.vip),
            port: s.port.to_be(),
            pad0: 0,
        };
        writes += put(&mut self.revnat, &REVNAT, s.rev_nat_id, rn)?;
        let reject = if s.reject { SVC_F_REJECT } else { 0 };
        let ranges = if s.source_ranges { SVC_F_SOURCE_RANGES } else { 0 };
        let node_denied = if s.node_denied { SVC_F_NODE_DENIED } else { 0 };
        let mut master = SvcValue {
            count: active.len() as u16,
            flags: reject | ranges | node_denied,
            rev_nat_id: s.rev_nat_id,
            algorithm: s.algorithm.code(),
            affinity_timeout: s.affinity_timeout_secs,
            ..Default::default()
        };
        if inline {
            master.flags |= SVC_F_INLINE;
            for (i, b) in active.iter().enumerate() {
                master.inline_backends[i] = SvcBackend {
                    id: b.id,
                    entry: entry(b),
                };
            }
        }
        writes += put(&mut self.services, &SERVICES, master_key, master)?;
        // A frontend that left Maglev frees its table (nothing reads it now).
        if let Some(old) = old
            && old.flags & SVC_F_VIP_MARKER == 0
            && old.algorithm == SVC_ALG_MAGLEV
            && (s.algorithm != Algorithm::Maglev || s.rev_nat_id != old.rev_nat_id)
        {
            writes += self.remove_maglev(old.rev_nat_id)?;
        }
        // One marker per VIP: the port written last decides whether
        // unknown ports are rejected (the agent writes one setting per node)
        // or, for a node's address, pass.
        let node = if s.node_address { SVC_F_NODE_ADDRESS } else { 0 };
        let marker = SvcValue {
            flags: SVC_F_VIP_MARKER | reject | node,
            ..Default::default()
        };
        if cluster {
            writes += put(&mut self.services, &SERVICES, SvcKey::vip_marker(s.vip), marker)?;
        }
        writes += self.remove_slots_from(&master_key, slots as u16 + 1)?;
        Ok(writes)
    }

    /// The table over the active backends, by identity (address and port).
    fn write_maglev(&mut self, rev_nat_id: u32, active: &[&Backend]) -> Result<usize, MapsError> {
        let idents: Vec<Vec<u8>> = active
            .iter()
            .map(|b| format!("{}:{}", b.addr, b.port).into_bytes())
            .collect();
        let refs: Vec<&[u8]> = idents.iter().map(Vec::as_slice).collect();
        let ids: Vec<u32> = active.iter().map(|b| b.id).collect();
        let table = super::maglev::table(&refs, self.maglev_m);
        let mut writes = 0;
        for (k, v) in super::maglev::chunks(rev_nat_id, &table, &ids) {
            writes += put(&mut self.maglev, &MAGLEV, k, v)?;
        }
        Ok(writes)
    }

    /// The Maglev map entries one frontend's table takes.
    fn maglev_chunks(&self) -> u32 {
        (self.maglev_m as usize).div_ceil(MAGLEV_CHUNK) as u32
    }

    /// How many frontends' Maglev tables the map holds at most.
    pub fn maglev_capacity(&self) -> usize {
        use aya::maps::IterableMap;
        let entries = self.maglev.map().info().map_or(0, |i| i.max_entries());
        (entries / self.maglev_chunks().max(1)) as usize
    }

    /// The reverse-NAT ids of the frontends with a Maglev table in the map.
    pub fn maglev_tables(&self) -> Result<std::collections::BTreeSet<u32>, MapsError> {
        self.maglev
            .keys()
            .map(|k| k.map(|k| k.rev_nat_id))
            .collect::<Result<_, _>>()
            .map_err(err(MAGLEV.name))
    }

    /// Remove one frontend's Maglev table; the entries that were there.
    fn remove_maglev(&mut self, rev_nat_id: u32) -> Result<usize, MapsError> {
        let mut n = 0;
        for chunk in 0..self.maglev_chunks() {
            let k = MaglevKey { rev_nat_id, chunk };
            n += usize::from(removed(self.maglev.remove(&k), &MAGLEV)?);
        }
        Ok(n)
    }

    /// Slots from `first` on belong to nobody now.
    fn remove_slots_from(&mut self, master: &SvcKey, first: u16) -> Result<usize, MapsError> {
        let mut n = 0;
        let mut slot = first;
        while removed(self.services.remove(&SvcKey { slot, ..*master }), &SERVICES)? {
            n += 1;
            slot += 1;
        }
        Ok(n)
    }

    /// Set the state of backend `id`, already written (a frontend sharing
    /// it changed its view); returns the entries written.
    pub fn set_backend_state(&mut self, id: u32, active: bool) -> Result<usize, MapsError> {
        let Some(mut v) = lookup(&self.backends, &BACKENDS, &id)? else {
            return Ok(0);
        };
        v.state = backend_state(active);
        put(&mut self.backends, &BACKENDS, id, v)
    }

    /// Remove a backend no Service uses any more (its connections, if
    /// any, end with it); false when it was not there.
    pub fn remove_backend(&mut self, id: u32) -> Result<bool, MapsError> {
        removed(self.backends.remove(&id), &BACKENDS)
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
        self.remove_scoped(vip, port, proto, SVC_SCOPE_CLUSTER, last_of_vip)
    }

    /// The same for a frontend of either scope (an external one has no
    /// marker: `last_of_vip` is for the cluster scope).
    pub fn remove_scoped(
        &mut self,
        vip: IpAddr,
        port: u16,
        proto: u8,
        scope: u8,
        last_of_vip: bool,
    ) -> Result<usize, MapsError> {
        let master_key = SvcKey::scoped(vip, port, proto, 0, scope);
        let Some(master) = lookup(&self.services, &SERVICES, &master_key)? else {
            return Ok(0);
        };
        if master.flags & SVC_F_VIP_MARKER != 0 {
            return Ok(0);
        }
        self.services.remove(&master_key).map_err(err(SERVICES.name))?;
        let mut n = 1 + self.remove_slots_from(&master_key, 1)?;
        n += self.remove_maglev(master.rev_nat_id)?;
        n += usize::from(removed(self.revnat.remove(&master.rev_nat_id), &REVNAT)?);
        if scope == SVC_SCOPE_CLUSTER
            && last_of_vip
            && removed(self.services.remove(&SvcKey::vip_marker(vip)), &SERVICES)?
        {
            self.filter_step(vip, false)?;
            n += 1;
        }
        Ok(n)
    }

    pub fn memory(&self) -> Result<LbMemory, MapsError> {
        use aya::maps::IterableMap;
        Ok(LbMemory {
            services: super::memlock(self.services.map(), &SERVICES)?,
            backends: super::memlock(self.backends.map(), &BACKENDS)?,
            revnat: super::memlock(self.revnat.map(), &REVNAT)?,
            vip_filter: super::memlock(self.vip_filter.map(), &VIP_FILTER)?,
        })
    }

    /// Every service port (slot 0 entries, VIP markers excluded), sorted.
    pub fn services(&self) -> Result<Vec<ServiceView>, MapsError> {
        let mut out = Vec::new();
        for kv in self.services.iter() {
            let (k, v) = kv.map_err(err(SERVICES.name))?;
            if k.slot != 0 || v.flags & SVC_F_VIP_MARKER != 0 {
                continue;
            }
            let mut active = Vec::with_capacity(v.count as usize);
            if v.flags & SVC_F_INLINE != 0 {
                let n = usize::from(v.count).min(SVC_INLINE);
                active.extend(v.inline_backends[..n].iter().map(|b| b.id));
            } else {
                for slot in 1..=v.count {
                    if let Some(sv) = lookup(&self.services, &SERVICES, &SvcKey { slot, ..k })? {
                        active.push(sv.backend_id);
                    }
                }
            }
            out.push(ServiceView {
                vip: ip(&k.addr),
                port: u16::from_be(k.port),
                proto: k.proto,
                scope: k.scope,
                rev_nat_id: v.rev_nat_id,
                algorithm: Algorithm::from_code(v.algorithm),
                affinity_timeout_secs: v.affinity_timeout,
                reject: v.flags & SVC_F_REJECT != 0,
                active,
            });
        }
        out.sort_by_key(|s| (s.vip, s.port, s.proto, s.scope));
        Ok(out)
    }

    /// The service entry (slot 0) of one port, if it exists.
    pub fn service(&self, vip: IpAddr, port: u16, proto: u8) -> Result<Option<SvcValue>, MapsError> {
        lookup(&self.services, &SERVICES, &SvcKey::new(vip, port, proto, 0))
    }

    /// Every backend, by id.
    pub fn backends(&self) -> Result<Vec<BackendView>, MapsError> {
        Ok(super::entries(&self.backends, &BACKENDS)?
            .into_iter()
            .map(|(id, b)| backend_view(id, &b))
            .collect())
    }

    /// The backend with this id.
    pub fn backend(&self, id: u32) -> Result<Option<BackendView>, MapsError> {
        Ok(lookup(&self.backends, &BACKENDS, &id)?.map(|b| backend_view(id, &b)))
    }

    /// Every affinity entry (client and service -> backend).
    pub fn affinities(&self) -> Result<Vec<(AffinityKey, AffinityValue)>, MapsError> {
        self.affinity
            .iter()
            .collect::<Result<_, _>>()
            .map_err(err(AFFINITY.name))
    }

    /// The VIP filter's counter for `vip`.
    pub fn vip_filter_count(&self, vip: IpAddr) -> Result<u8, MapsError> {
        let slot = vip_slot(&addr(vip));
        let w = self.vip_filter.get(&(slot / 8), 0).map_err(err(VIP_FILTER.name))?;
        Ok((w >> ((slot % 8) * 8)) as u8)
    }

    /// Set the VIP filter's counter for `vip`'s slot (tests, and repairing
    /// a filter by recounting).
    pub fn set_vip_filter_count(&mut self, vip: IpAddr, n: u8) -> Result<(), MapsError> {
        let slot = vip_slot(&addr(vip));
        let (word, shift) = (slot / 8, (slot % 8) * 8);
        let w = self.vip_filter.get(&word, 0).map_err(err(VIP_FILTER.name))?;
        self.vip_filter
            .set(word, (w & !(0xff << shift)) | (u64::from(n) << shift), 0)
            .map_err(err(VIP_FILTER.name))
    }

    /// Count an address into (or out of) its slot of the filter. A counter
    /// that reached 255 stays there: the slot then always says "maybe",
    /// which costs lookups, never correctness.
    fn filter_step(&mut self, vip: IpAddr, add: bool) -> Result<(), MapsError> {
        let n = match (add, self.vip_filter_count(vip)?) {
            (_, 255) => 255,
            (true, n) => n + 1,
            (false, 0) => 0,
            (false, n) => n - 1,
        };
        self.set_vip_filter_count(vip, n)
    }
}

fn backend_state(active: bool) -> u8 {
    if active { BACKEND_ACTIVE } else { BACKEND_TERMINATING }
}

fn backend_view(id: u32, b: &BackendValue) -> BackendView {
    BackendView {
        id,
        addr: ip(&b.addr),
        port: u16::from_be(b.port),
        proto: b.proto,
        active: b.state == BACKEND_ACTIVE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatapathConfig;
    use crate::loader::{self, EGRESS};
    use crate::maps::endpoints::Endpoint;
    use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
    use std::net::Ipv4Addr;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
    const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 5];
    /// Where sl_backends says every backend is, once the test has made it
    /// disagree with what the frontend or the slots carry.
    const ELSEWHERE: Ipv4Addr = Ipv4Addr::new(10, 244, 9, 9);

    /// A Service port with `n` backends, ids 11.., at 10.244.2.11...
    fn service(n: u32) -> ServiceSpec {
        ServiceSpec {
            vip: VIP.into(),
            port: 80,
            proto: PROTO_TCP,
            rev_nat_id: 1,
            algorithm: Algorithm::Random,
            affinity_timeout_secs: 0,
            reject: false,
            node_address: false,
            scope: SVC_SCOPE_CLUSTER,
            source_ranges: false,
            node_denied: false,
            draining: Vec::new(),
            backends: (11..11 + n)
                .map(|id| Backend {
                    id,
                    addr: Ipv4Addr::new(10, 244, 2, id as u8).into(),
                    port: 8080,
                    active: true,
                })
                .collect(),
        }
    }

    fn is_backend(a: Ipv4Addr) -> bool {
        a.octets()[..3] == [10, 244, 2]
    }

    /// A TCP SYN from the client pod to the VIP, through the real egress
    /// program: the address it was sent to.
    fn connect(ebpf: &aya::Ebpf, sport: u16) -> Ipv4Addr {
        send(ebpf, sport, 0x02)
    }

    /// A TCP segment with `flags` from the client pod to the VIP.
    fn send(ebpf: &aya::Ebpf, sport: u16, flags: u8) -> Ipv4Addr {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&POD_MAC);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = PROTO_TCP;
        ip[12..16].copy_from_slice(&CLIENT.octets());
        ip[16..20].copy_from_slice(&VIP.octets());
        let sum = crate::checksum::of(ip, 0);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let tcp = &mut f[34..];
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        let prog: &SchedClassifier = ebpf.program(EGRESS).unwrap().try_into().unwrap();
        let mut out = vec![0u8; f.len() + 64];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(&f),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .unwrap();
        // bpf_redirect_neigh toward the backend.
        assert_eq!(r.return_value, 7, "verdict");
        Ipv4Addr::new(out[30], out[31], out[32], out[33])
    }

    const ACK: u8 = 0x10;

    fn maps_gone(maps: &crate::maps::Maps) -> u64 {
        maps.observe()
            .count(Reason::DropBackendGone, Direction::Egress)
            .unwrap()
    }

    fn datapath() -> (aya::Ebpf, crate::maps::Maps) {
        let (ebpf, mut maps) = loader::load_unpinned(&DatapathConfig::default()).unwrap();
        maps.endpoints_mut()
            .add(&Endpoint {
                // The test-run device is loopback: ifindex 1.
                addr: CLIENT.into(),
                ifindex: 1,
                endpoint_id: 7,
                mac: POD_MAC,
                parent_ifindex: 0,
                netns_cookie: 0,
            })
            .unwrap();
        (ebpf, maps)
    }

    /// Every backend's sl_backends entry now names ELSEWHERE.
    fn move_backends(lb: &mut LbMaps, ids: std::ops::Range<u32>) {
        for id in ids {
            let e = lookup(&lb.backends, &BACKENDS, &id).unwrap().unwrap();
            let moved = BackendValue {
                addr: addr(ELSEWHERE.into()),
                ..e
            };
            lb.backends.insert(id, moved, 0).unwrap();
        }
    }

    /// Up to four backends, the frontend carries them and there are no
    /// slots; a new connection goes where it says, without a lookup of
    /// the backend (shown by making sl_backends disagree). A frontend
    /// carried over from layout 8 (no SVC_F_INLINE, slots without their
    /// backend's entry) is served through the slots and sl_backends.
    #[test]
    fn a_small_service_carries_its_backends() {
        if !crate::root_or_skip(
            "a_small_service_carries_its_backends",
            "loading the datapath needs root",
        ) {
            return;
        }
        let (ebpf, mut maps) = datapath();
        let lb = maps.lb_mut();
        lb.upsert_service(&service(4)).unwrap();
        let front_key = SvcKey::new(VIP.into(), 80, PROTO_TCP, 0);
        let front = lookup(&lb.services, &SERVICES, &front_key).unwrap().unwrap();
        assert_eq!((front.count, front.flags & SVC_F_INLINE), (4, SVC_F_INLINE));
        for (i, b) in front.inline_backends.iter().enumerate() {
            let e = lookup(&lb.backends, &BACKENDS, &b.id).unwrap().unwrap();
            assert_eq!((b.id, b.entry), (11 + i as u32, e), "the frontend carries backend {i}");
        }
        let slot1 = SvcKey::new(VIP.into(), 80, PROTO_TCP, 1);
        assert_eq!(lookup(&lb.services, &SERVICES, &slot1).unwrap(), None, "no slots");
        assert_eq!(lb.services().unwrap()[0].active, vec![11, 12, 13, 14]);
        let first = connect(&ebpf, 39999);
        move_backends(lb, 11..15);
        for sport in 40000..40020 {
            assert!(is_backend(connect(&ebpf, sport)), "read from the frontend");
        }
        // An established connection is served from its conntrack entry;
        // one carried over from layout 9 (without the backend's address in
        // it) finds its backend in the frontend too.
        assert_eq!(send(&ebpf, 39999, ACK), first, "established: its entry");
        for (k, v) in maps.ct().entries().unwrap() {
            if k.sport == 39999u16.to_be() {
                let old = CtValue {
                    flags: v.flags & !CT_F_NAT,
                    nat_addr: [0; 16],
                    nat_port: 0,
                    ..v
                };
                maps.ct_mut().insert(k, old).unwrap();
            }
        }
        assert_eq!(send(&ebpf, 39999, ACK), first, "established: read from the frontend");
        // One its frontend no longer carries is looked up: gone, reset.
        let lb = maps.lb_mut();
        let mut three = service(4);
        three.backends.retain(|b| b.addr != IpAddr::V4(first));
        lb.upsert_service(&three).unwrap();
        lb.remove_backend(u32::from(first.octets()[3])).unwrap();
        let gone = || maps_gone(&maps);
        let before = gone();
        send(&ebpf, 39999, ACK);
        assert_eq!(gone(), before + 1, "its backend gone: reset");
        let lb = maps.lb_mut();
        lb.upsert_service(&service(4)).unwrap();
        move_backends(lb, 11..15);

        // As layout 8 left it: slots, no entries carried.
        let lb = maps.lb_mut();
        let old = SvcValue {
            flags: 0,
            inline_backends: Default::default(),
            ..front
        };
        for (i, b) in front.inline_backends.iter().enumerate() {
            let slot = SvcValue {
                backend_id: b.id,
                ..Default::default()
            };
            let k = SvcKey::new(VIP.into(), 80, PROTO_TCP, i as u16 + 1);
            lb.services.insert(k, slot, 0).unwrap();
        }
        lb.services.insert(front_key, old, 0).unwrap();
        assert_eq!(lb.services().unwrap()[0].active, vec![11, 12, 13, 14]);
        assert_eq!(connect(&ebpf, 40100), ELSEWHERE, "looked up");

        // The agent's next write of the Service carries them again and
        // takes the slots away.
        let lb = maps.lb_mut();
        lb.upsert_service(&service(4)).unwrap();
        assert_eq!(lookup(&lb.services, &SERVICES, &front_key).unwrap().unwrap(), front);
        assert_eq!(lookup(&lb.services, &SERVICES, &slot1).unwrap(), None);
    }

    /// More than four: slots, each with its backend's entry, read instead
    /// of sl_backends; a slot without one (layout 8) looks it up. Growing
    /// and shrinking across four moves the backends between the frontend
    /// and the slots.
    #[test]
    fn a_big_service_has_slots_that_carry_their_backend() {
        if !crate::root_or_skip(
            "a_big_service_has_slots_that_carry_their_backend",
            "loading the datapath needs root",
        ) {
            return;
        }
        let (ebpf, mut maps) = datapath();
        let lb = maps.lb_mut();
        lb.upsert_service(&service(2)).unwrap();
        lb.upsert_service(&service(6)).unwrap();
        let front_key = SvcKey::new(VIP.into(), 80, PROTO_TCP, 0);
        let front = lookup(&lb.services, &SERVICES, &front_key).unwrap().unwrap();
        assert_eq!((front.count, front.flags & SVC_F_INLINE), (6, 0));
        assert_eq!(front.inline_backends, [SvcBackend::default(); SVC_INLINE]);
        for slot in 1..=6u16 {
            let k = SvcKey::new(VIP.into(), 80, PROTO_TCP, slot);
            let v = lookup(&lb.services, &SERVICES, &k).unwrap().unwrap();
            let e = lookup(&lb.backends, &BACKENDS, &v.backend_id).unwrap().unwrap();
            assert_eq!((v.flags, v.backend), (SVC_F_SLOT_BACKEND, e), "slot {slot}");
        }
        assert_eq!(lb.services().unwrap()[0].active, (11..17).collect::<Vec<_>>());
        move_backends(lb, 11..17);
        for sport in 40000..40020 {
            assert!(is_backend(connect(&ebpf, sport)), "read from the slot");
        }
        let lb = maps.lb_mut();
        for slot in 1..=6u16 {
            let k = SvcKey::new(VIP.into(), 80, PROTO_TCP, slot);
            let v = lookup(&lb.services, &SERVICES, &k).unwrap().unwrap();
            let carried = SvcValue {
                flags: 0,
                backend: BackendValue::default(),
                ..v
            };
            lb.services.insert(k, carried, 0).unwrap();
        }
        assert_eq!(connect(&ebpf, 40100), ELSEWHERE, "no entry in the slot: looked up");

        let lb = maps.lb_mut();
        lb.upsert_service(&service(3)).unwrap();
        let front = lookup(&lb.services, &SERVICES, &front_key).unwrap().unwrap();
        assert_eq!((front.count, front.flags & SVC_F_INLINE), (3, SVC_F_INLINE));
        for slot in 1..=6u16 {
            let k = SvcKey::new(VIP.into(), 80, PROTO_TCP, slot);
            assert_eq!(lookup(&lb.services, &SERVICES, &k).unwrap(), None, "slot {slot} gone");
        }
        assert_eq!(lb.services().unwrap()[0].active, vec![11, 12, 13]);
    }
}
