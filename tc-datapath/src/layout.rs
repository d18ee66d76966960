//! Rust mirrors of `bpf/layout.h`. Each type is `#[repr(C)]` with the same
//! fields in the same order; `tests::matches_c` holds every size and offset
//! to what clang compiled from the header. Constructors zero all padding:
//! hash maps compare keys bytewise.

use std::net::{IpAddr, Ipv6Addr};

include!(concat!(env!("OUT_DIR"), "/c_layout.rs"));

/// An address as the datapath stores it: 16 bytes, IPv4 v4-mapped.
pub type Addr = [u8; 16];

pub fn addr(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

pub fn ip(a: &Addr) -> IpAddr {
    let v6 = Ipv6Addr::from(*a);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

/// An IP protocol number as the tools print it.
pub fn proto_name(p: u8) -> String {
    match p {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        PROTO_ICMP => "icmp".into(),
        PROTO_ICMPV6 => "icmpv6".into(),
        PROTO_SCTP => "sctp".into(),
        n => n.to_string(),
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SvcKey {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    /// `SVC_SCOPE_*`: who the frontend serves.
    pub scope: u8,
    pub slot: u16,
    pub pad1: u16,
}

/// Pods and host sockets.
pub const SVC_SCOPE_CLUSTER: u8 = 0;
/// Traffic from outside the node, at its uplinks.
pub const SVC_SCOPE_EXTERNAL: u8 = 1;

impl SvcKey {
    pub fn new(vip: IpAddr, port: u16, proto: u8, slot: u16) -> SvcKey {
        SvcKey::scoped(vip, port, proto, slot, SVC_SCOPE_CLUSTER)
    }

    pub fn scoped(vip: IpAddr, port: u16, proto: u8, slot: u16, scope: u8) -> SvcKey {
        SvcKey {
            addr: addr(vip),
            port: port.to_be(),
            proto,
            scope,
            slot,
            ..Default::default()
        }
    }

    /// The per-VIP marker: tells "known VIP, unknown port" from other traffic.
    pub fn vip_marker(vip: IpAddr) -> SvcKey {
        SvcKey::new(vip, 0, 0, 0)
    }
}

/// The VIP filter's counter for an address: `vip_slot()` of layout.h. The
/// words are read in native order, as the programs (compiled for this
/// host's byte order) read them.
pub fn vip_slot(a: &Addr) -> u32 {
    let w = |i: usize| u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]);
    (w(0) ^ w(1) ^ w(2) ^ w(3)).wrapping_mul(0x9E37_79B1) >> (32 - VIP_FILTER_BITS)
}

pub const SVC_ALG_RANDOM: u8 = 0;
pub const SVC_ALG_MAGLEV: u8 = 1;
pub const SVC_F_REJECT: u8 = 0x01;
pub const SVC_F_VIP_MARKER: u8 = 0x02;
pub const SVC_F_NODE_ADDRESS: u8 = 0x04;
pub const SVC_F_SOURCE_RANGES: u8 = 0x08;
/// On a slot: `backend` copies the backend's entry (with state active).
pub const SVC_F_SLOT_BACKEND: u8 = 0x10;
/// On a frontend: its backends are `inline_backends`, it has no slots.
pub const SVC_F_INLINE: u8 = 0x20;
/// On a load-balancer IP's cluster frontend with source ranges: none of
/// the node's addresses is in them, so the node's own sockets are refused.
pub const SVC_F_NODE_DENIED: u8 = 0x40;
/// The most backends a frontend carries itself (see layout.h).
pub const SVC_INLINE: usize = 4;

/// A backend a frontend carries: its id and its entry.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SvcBackend {
    pub id: u32,
    pub entry: BackendValue,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SvcValue {
    pub backend_id: u32,
    pub rev_nat_id: u32,
    pub count: u16,
    pub flags: u8,
    pub algorithm: u8,
    pub affinity_timeout: u32,
    /// Slots with `SVC_F_SLOT_BACKEND`: the backend's entry.
    pub backend: BackendValue,
    /// Frontends with `SVC_F_INLINE`: their `count` backends.
    pub inline_backends: [SvcBackend; SVC_INLINE],
}

pub const BACKEND_ACTIVE: u8 = 0;
pub const BACKEND_TERMINATING: u8 = 1;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackendValue {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub state: u8,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RevNatValue {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub pad0: u16,
}

/// One frontend a socket named and the backend the hooks gave it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SockRevSlot {
    pub backend: Addr,
    pub frontend: Addr,
    /// Network byte order.
    pub backend_port: u16,
    /// Network byte order.
    pub frontend_port: u16,
}

pub const SOCK_REV_SLOTS: usize = 4;

/// What `sl_sock_svc` holds for a socket (by its cookie).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SockRev {
    pub slot: [SockRevSlot; SOCK_REV_SLOTS],
    pub next: u32,
}

/// A pod's share of the conntrack table.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtPodValue {
    pub entries: u32,
    pub pad0: u32,
}

/// The first fragment's ports, for the later fragments of its datagram.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    pub saddr: Addr,
    pub daddr: Addr,
    pub id: u32,
    pub proto: u8,
    pub pad0: [u8; 3],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FragValue {
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
}

pub const MAGLEV_CHUNK: usize = 1024;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MaglevKey {
    pub rev_nat_id: u32,
    pub chunk: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaglevValue {
    pub backend_ids: [u32; MAGLEV_CHUNK],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AffinityKey {
    pub client: Addr,
    pub rev_nat_id: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AffinityValue {
    pub last_used_ns: u64,
    pub backend_id: u32,
    pub pad0: u32,
}

pub const CT_SERVICE: u8 = 1;
pub const CT_FLOW: u8 = 2;
pub const CT_NEW: u8 = 0;
pub const CT_ESTABLISHED: u8 = 1;
pub const CT_CLOSING: u8 = 2;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    pub saddr: Addr,
    pub daddr: Addr,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    pub kind: u8,
    pub pad0: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtValue {
    pub expires_ns: u64,
    pub backend_id: u32,
    pub rev_nat_id: u32,
    pub state: u8,
    pub flags: u8,
    /// The L2 next hop toward the backend, learned from its replies.
    pub nh_mac: [u8; 6],
    /// The interface `nh_mac` was seen on; 0 = not learned.
    pub nh_ifindex: u32,
    /// With [`CT_F_NAT`]: network byte order.
    pub nat_port: u16,
    pub pad0: u16,
    /// With [`CT_F_NAT`], the other side of a Service connection's
    /// translation: the backend in its `CT_SERVICE` entry, the VIP its
    /// replies come back from in its `CT_FLOW` entry.
    pub nat_addr: Addr,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EndpointKey {
    pub addr: Addr,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointValue {
    pub ifindex: u32,
    pub endpoint_id: u32,
    pub mac: [u8; 6],
    pub flags: u16,
    /// The node-side parent of the pod's macvlan/ipvlan interface; 0 = none.
    pub parent_ifindex: u32,
    pub pad0: u32,
    /// The pod's network namespace cookie; 0 = not known.
    pub netns_cookie: u64,
}

/// A node uplink's addresses, for SNAT (zero = none).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UplinkValue {
    pub addr4: Addr,
    pub addr6: Addr,
}

/// A hostPort on one of the node's addresses.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct HostportKey {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub pad0: u8,
}

/// The pod behind a hostPort.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostportValue {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub pad0: u16,
    pub endpoint_id: u32,
}

/// The C `lb_source_key` is aya's `lpm_trie::Key<LbSourceMatch>`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LbSourceKey {
    pub prefixlen: u32,
    pub rev_nat_id: u32,
    pub addr: Addr,
}

/// What a source-range trie entry matches (after the prefix length).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LbSourceMatch {
    pub rev_nat_id: u32,
    pub addr: Addr,
}

pub const CT_NAT: u8 = 3;
pub const NAT_F_REPLY: u8 = 0x01;
pub const NAT_F_LOCAL: u8 = 0x02;
pub const NAT_F_SNAT: u8 = 0x04;
pub const NAT_F_REMAP: u8 = 0x08;
/// `NAT_SNAT_HOLD_NS` of layout.h: a SNAT connection's port stays taken
/// this long after its FIN or RST (`sl_snat_held`).
pub const NAT_SNAT_HOLD_NS: u64 = 65_000_000_000;

/// One direction of a connection from outside, at the uplink.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NatValue {
    pub expires_ns: u64,
    pub saddr: Addr,
    pub daddr: Addr,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub ifindex: u32,
    pub backend_id: u32,
    pub mac: [u8; 6],
    pub state: u8,
    pub flags: u8,
    pub pad0: u32,
}

pub const CT_F_HAIRPIN: u8 = 0x01;
pub const CT_F_INBOUND: u8 = 0x02;
pub const CT_F_NAT: u8 = 0x04;

pub const ID_ANY: u32 = 0;
pub const ID_HOST: u32 = 1;
pub const ID_WORLD: u32 = 2;
pub const ID_FIRST_ALLOCATED: u32 = 256;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpcacheValue {
    pub identity: u32,
    pub pad0: u32,
}

/// The C `cidr_key` is aya's `lpm_trie::Key<Addr>`: a prefix length, then
/// the address. This mirror exists for the layout test.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CidrKey {
    pub prefixlen: u32,
    pub addr: Addr,
}

pub const POLICY_F_INGRESS: u8 = 0x01;
pub const POLICY_F_EGRESS: u8 = 0x02;
/// ADD's hold on a pod some policy may select, until the agent writes its
/// own entry: isolated both ways, no rules, its node allowed both ways.
pub const POLICY_F_PENDING: u8 = 0x04;

/// The kinds of rule an endpoint has in one direction (`EpPolicyValue::kinds`).
pub const RULE_K_ANY_PORT: u8 = 0x01;
pub const RULE_K_ANY_PROTO: u8 = 0x02;
pub const RULE_K_RANGE: u8 = 0x04;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EpPolicyValue {
    pub identity: u32,
    pub ingress_policy: u32,
    pub egress_policy: u32,
    pub flags: u8,
    /// `RULE_K_*` by direction (index = `Direction as usize`).
    pub kinds: [u8; 2],
    pub pad0: u8,
}

/// One slot of a CPU's cache of allowed verdicts (`sl_verdicts`, see
/// `verdict_slot` in layout.h). Only the programs write it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VerdictSlot {
    /// The peer's address, as two words.
    pub peer: [u64; 2],
    /// Endpoint id << 32 | direction << 24 | protocol << 16 | port (in
    /// network order).
    pub flow: u64,
    /// The policy generation it was made under, plus one (0: empty).
    pub generation: u64,
}

/// Slots of each CPU's verdict cache (`VERDICT_SLOTS`).
pub const VERDICT_SLOTS: u32 = 1024;

/// What a policy rule matches: the key of the rule hash, and inside
/// `lpm_trie::Key<PolicyMatch>` the key of the range trie.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct PolicyMatch {
    pub endpoint_id: u32,
    pub identity: u32,
    pub dir: u8,
    pub proto: u8,
    /// Network byte order.
    pub port: u16,
}

/// The C `policy_key`, for the layout test (aya's `Key<PolicyMatch>` is it).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyKey {
    pub prefixlen: u32,
    pub m: PolicyMatch,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyValue {
    pub policy: u32,
    pub pad0: u32,
}

pub const NAME_IDENTITY: u32 = 1;
pub const NAME_POLICY: u32 = 2;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NameKey {
    pub kind: u32,
    pub id: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameValue {
    pub name: [u8; NAME_LEN],
}

impl NameValue {
    /// `s`, cut to fit (at a character boundary), NUL-padded.
    pub fn new(s: &str) -> NameValue {
        let mut name = [0u8; NAME_LEN];
        let mut end = s.len().min(NAME_LEN - 1);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        name[..end].copy_from_slice(&s.as_bytes()[..end]);
        NameValue { name }
    }

    pub fn to_string_lossy(&self) -> String {
        let end = self.name.iter().position(|b| *b == 0).unwrap_or(NAME_LEN);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

/// One policy drop, as the programs report it on `sl_events`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowEvent {
    pub time_ns: u64,
    pub saddr: Addr,
    pub daddr: Addr,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub reason: u16,
    pub endpoint_id: u32,
    pub peer_identity: u32,
    pub policy: u32,
    /// service-translated: the backend chosen.
    pub backend_id: u32,
}

impl FlowEvent {
    /// The event in a ring-buffer record (records are at least as long).
    pub fn from_bytes(b: &[u8]) -> Option<FlowEvent> {
        if b.len() < size_of::<FlowEvent>() {
            return None;
        }
        // SAFETY: the length is checked; FlowEvent is plain old data (see
        // aya::Pod below), and an unaligned read is what a record needs.
        Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast()) })
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsValue {
    pub packets: u64,
    pub bytes: u64,
}

/// What the attached programs were loaded with (the `sl_info` map's one
/// entry): their version and their settings as JSON.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DpInfo {
    pub prog_hash: u64,
    pub config: [u8; DP_INFO_CONFIG_LEN],
}

impl DpInfo {
    /// The entry of programs loaded with `cfg`.
    pub fn of(cfg: &crate::config::DatapathConfig) -> DpInfo {
        let json = serde_json::to_vec(&cfg.program_settings()).expect("JSON");
        assert!(json.len() < DP_INFO_CONFIG_LEN, "the program settings fit sl_info");
        let mut config = [0u8; DP_INFO_CONFIG_LEN];
        config[..json.len()].copy_from_slice(&json);
        DpInfo {
            prog_hash: cfg.prog_hash(),
            config,
        }
    }

    /// The settings it holds.
    pub fn config(&self) -> Result<crate::config::DatapathConfig, serde_json::Error> {
        let end = self.config.iter().position(|b| *b == 0).unwrap_or(DP_INFO_CONFIG_LEN);
        crate::config::DatapathConfig::from_program_settings(&self.config[..end])
    }
}

/// Why a packet was forwarded or dropped: the metrics map's first index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum Reason {
    Forwarded = 0,
    ServiceTranslated = 1,
    ReplyTranslated = 2,
    DropNoBackend = 3,
    DropUnknownPort = 4,
    DropSourceAddress = 5,
    DropMalformed = 6,
    DropFragment = 7,
    DropNatFailed = 8,
    DropBackendGone = 9,
    Hairpin = 10,
    IcmpErrorTranslated = 11,
    Rejected = 12,
    DropPolicy = 13,
    DropEthertype = 14,
    DropCtPodLimit = 15,
    SockTranslated = 16,
    DropSourceRange = 17,
    DropNoSnatPort = 18,
    DropPortClash = 19,
}

impl Reason {
    pub const ALL: [Reason; 20] = [
        Reason::Forwarded,
        Reason::ServiceTranslated,
        Reason::ReplyTranslated,
        Reason::DropNoBackend,
        Reason::DropUnknownPort,
        Reason::DropSourceAddress,
        Reason::DropMalformed,
        Reason::DropFragment,
        Reason::DropNatFailed,
        Reason::DropBackendGone,
        Reason::Hairpin,
        Reason::IcmpErrorTranslated,
        Reason::Rejected,
        Reason::DropPolicy,
        Reason::DropEthertype,
        Reason::DropCtPodLimit,
        Reason::SockTranslated,
        Reason::DropSourceRange,
        Reason::DropNoSnatPort,
        Reason::DropPortClash,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::Forwarded => "forwarded",
            Reason::ServiceTranslated => "service-translated",
            Reason::ReplyTranslated => "reply-translated",
            Reason::DropNoBackend => "drop-no-backend",
            Reason::DropUnknownPort => "drop-unknown-port",
            Reason::DropSourceAddress => "drop-source-address",
            Reason::DropMalformed => "drop-malformed",
            Reason::DropFragment => "drop-fragment",
            Reason::DropNatFailed => "drop-nat-failed",
            Reason::DropBackendGone => "drop-backend-gone",
            Reason::Hairpin => "hairpin",
            Reason::IcmpErrorTranslated => "icmp-error-translated",
            Reason::Rejected => "rejected",
            Reason::DropPolicy => "drop-policy",
            Reason::DropEthertype => "drop-ethertype",
            Reason::DropCtPodLimit => "drop-ct-pod-limit",
            Reason::SockTranslated => "sock-translated",
            Reason::DropSourceRange => "drop-source-range",
            Reason::DropNoSnatPort => "drop-no-snat-port",
            Reason::DropPortClash => "drop-port-clash",
        }
    }

    pub fn is_drop(self) -> bool {
        (Reason::DropNoBackend..=Reason::DropBackendGone).contains(&self)
            || matches!(
                self,
                Reason::DropPolicy
                    | Reason::DropEthertype
                    | Reason::DropCtPodLimit
                    | Reason::DropSourceRange
                    | Reason::DropNoSnatPort
                    | Reason::DropPortClash
            )
    }

    pub fn from_u32(n: u32) -> Option<Reason> {
        Reason::ALL.get(n as usize).copied()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum Direction {
    Egress = 0,
    Ingress = 1,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        }
    }
}

/// Index into the metrics map.
pub fn metrics_index(reason: Reason, dir: Direction) -> u32 {
    reason as u32 * 2 + dir as u32
}

// SAFETY: plain-old-data #[repr(C)] types without implicit padding (the
// layout test proves each size is the sum of its fields); every bit pattern
// is a valid value.
unsafe impl aya::Pod for SvcKey {}
unsafe impl aya::Pod for SvcValue {}
unsafe impl aya::Pod for BackendValue {}
unsafe impl aya::Pod for RevNatValue {}
unsafe impl aya::Pod for FragKey {}
unsafe impl aya::Pod for CtPodValue {}
unsafe impl aya::Pod for SockRev {}
unsafe impl aya::Pod for FragValue {}
unsafe impl aya::Pod for MaglevKey {}
unsafe impl aya::Pod for MaglevValue {}
unsafe impl aya::Pod for AffinityKey {}
unsafe impl aya::Pod for AffinityValue {}
unsafe impl aya::Pod for CtKey {}
unsafe impl aya::Pod for CtValue {}
unsafe impl aya::Pod for EndpointKey {}
unsafe impl aya::Pod for EndpointValue {}
unsafe impl aya::Pod for UplinkValue {}
unsafe impl aya::Pod for HostportKey {}
unsafe impl aya::Pod for HostportValue {}
unsafe impl aya::Pod for LbSourceMatch {}
unsafe impl aya::Pod for NatValue {}
unsafe impl aya::Pod for MetricsValue {}
unsafe impl aya::Pod for IpcacheValue {}
unsafe impl aya::Pod for EpPolicyValue {}
unsafe impl aya::Pod for VerdictSlot {}
unsafe impl aya::Pod for PolicyMatch {}
unsafe impl aya::Pod for PolicyValue {}
unsafe impl aya::Pod for NameKey {}
unsafe impl aya::Pod for NameValue {}
unsafe impl aya::Pod for FlowEvent {}
unsafe impl aya::Pod for DpInfo {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::mem::{offset_of, size_of};

    macro_rules! rust_layout {
        ($($c:literal => $t:ty { $($f:ident),* }),* $(,)?) => {{
            let mut m: HashMap<String, usize> = HashMap::new();
            $(
                m.insert($c.to_string(), size_of::<$t>());
                let mut sum = 0;
                $(
                    m.insert(format!("{}.{}", $c, stringify!($f)), offset_of!($t, $f));
                    sum += size_of_field(|v: &$t| &v.$f);
                )*
                assert_eq!(sum, size_of::<$t>(), "{} has implicit padding", $c);
            )*
            m
        }};
    }

    fn size_of_field<T, F>(_: impl Fn(&T) -> &F) -> usize {
        size_of::<F>()
    }

    #[test]
    fn matches_c() {
        let rust = rust_layout! {
            "svc_key" => SvcKey { addr, port, proto, scope, slot, pad1 },
            "svc_value" => SvcValue { backend_id, rev_nat_id, count, flags, algorithm, affinity_timeout, backend, inline_backends },
            "svc_backend" => SvcBackend { id, entry },
            "backend_value" => BackendValue { addr, port, proto, state },
            "revnat_value" => RevNatValue { addr, port, pad0 },
            "maglev_key" => MaglevKey { rev_nat_id, chunk },
            "maglev_value" => MaglevValue { backend_ids },
            "affinity_key" => AffinityKey { client, rev_nat_id },
            "affinity_value" => AffinityValue { last_used_ns, backend_id, pad0 },
            "frag_key" => FragKey { saddr, daddr, id, proto, pad0 },
            "ct_pod_value" => CtPodValue { entries, pad0 },
            "sock_rev_slot" => SockRevSlot { backend, frontend, backend_port, frontend_port },
            "sock_rev" => SockRev { slot, next },
            "frag_value" => FragValue { sport, dport },
            "ct_key" => CtKey { saddr, daddr, sport, dport, proto, kind, pad0 },
            "ct_value" => CtValue { expires_ns, backend_id, rev_nat_id, state, flags, nh_mac, nh_ifindex, nat_port, pad0, nat_addr },
            "endpoint_key" => EndpointKey { addr },
            "endpoint_value" => EndpointValue { ifindex, endpoint_id, mac, flags, parent_ifindex, pad0, netns_cookie },
            "uplink_value" => UplinkValue { addr4, addr6 },
            "hostport_key" => HostportKey { addr, port, proto, pad0 },
            "hostport_value" => HostportValue { addr, port, pad0, endpoint_id },
            "lb_source_key" => LbSourceKey { prefixlen, rev_nat_id, addr },
            "nat_value" => NatValue { expires_ns, saddr, daddr, sport, dport, ifindex, backend_id, mac, state, flags, pad0 },
            "ipcache_value" => IpcacheValue { identity, pad0 },
            "cidr_key" => CidrKey { prefixlen, addr },
            "ep_policy_value" => EpPolicyValue { identity, ingress_policy, egress_policy, flags, kinds, pad0 },
            "verdict_slot" => VerdictSlot { peer, flow, generation },
            "policy_match" => PolicyMatch { endpoint_id, identity, dir, proto, port },
            "policy_key" => PolicyKey { prefixlen, m },
            "policy_value" => PolicyValue { policy, pad0 },
            "name_key" => NameKey { kind, id },
            "name_value" => NameValue { name },
            "flow_event" => FlowEvent { time_ns, saddr, daddr, sport, dport, proto, dir, reason, endpoint_id, peer_identity, policy, backend_id },
            "metrics_value" => MetricsValue { packets, bytes },
            "dp_info" => DpInfo { prog_hash, config },
        };
        assert_eq!(rust.len(), C_LAYOUT.len(), "every C struct and field has a Rust mirror");
        for (name, c) in C_LAYOUT {
            assert_eq!(rust.get(*name), Some(c), "{name}: Rust {:?}, C {c}", rust.get(*name));
        }
        assert_eq!(Reason::ALL.len() as u32, REASON_MAX);
        // aya's trie keys are the C keys.
        assert_eq!(
            size_of::<aya::maps::lpm_trie::Key<PolicyMatch>>(),
            size_of::<PolicyKey>()
        );
        assert_eq!(size_of::<aya::maps::lpm_trie::Key<Addr>>(), size_of::<CidrKey>());
        assert_eq!(
            size_of::<aya::maps::lpm_trie::Key<LbSourceMatch>>(),
            size_of::<LbSourceKey>()
        );
        assert_eq!(POLICY_BITS_EXACT as usize, size_of::<PolicyMatch>() * 8);
        for (a, slot) in VIP_SLOT_SAMPLES {
            assert_eq!(vip_slot(&a), slot, "vip_slot({a:?}) differs from C");
        }
    }

    #[test]
    fn v4_is_mapped_and_round_trips() {
        let v4: IpAddr = "10.96.0.10".parse().unwrap();
        let a = addr(v4);
        assert_eq!(&a[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(ip(&a), v4);
        let v6: IpAddr = "fd00:96::a".parse().unwrap();
        assert_eq!(ip(&addr(v6)), v6);
    }
}
