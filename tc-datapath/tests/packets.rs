//! Packet-level tests of the real programs through BPF_PROG_TEST_RUN:
//! crafted frames go in, the rewritten frames come out and are checked
//! byte by byte, checksums recomputed from scratch.

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use sluice_tc_datapath::layout::*;
use sluice_tc_datapath::loader::{self, DatapathConfig, EGRESS, INGRESS};
use sluice_tc_datapath::maps::{Maps, ServiceSpec};
use std::net::IpAddr;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
/// A translated packet is handed to the kernel's neighbour output for its
/// backend (bpf_redirect_neigh), not sent on with the gateway's MAC.
const TC_ACT_REDIRECT: u32 = 7;
const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x07];
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

fn root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIP {test}: needs root (BPF_PROG_TEST_RUN)");
    if let Ok(p) = std::env::var("SLUICE_SKIP_LOG") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap();
        writeln!(f, "{test}: needs root (BPF_PROG_TEST_RUN)").unwrap();
    }
    false
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// One's-complement sum, folded.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

fn csum(data: &[u8], acc: u32) -> u16 {
    !(sum16(data, acc) as u16)
}

struct Frame {
    bytes: Vec<u8>,
}

const ETH: usize = 14;

impl Frame {
    /// Ethernet + IPv4/IPv6 + TCP (flags) or UDP, with valid checksums.
    fn new(src: &str, dst: &str, sport: u16, dport: u16, proto: u8, tcp_flags: u8, payload: &[u8]) -> Frame {
        let (src, dst) = (ip(src), ip(dst));
        let l4_len = if proto == PROTO_TCP { 20 } else { 8 } + payload.len();
        let mut l4 = vec![0u8; l4_len];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        if proto == PROTO_TCP {
            l4[4..8].copy_from_slice(&1000u32.to_be_bytes());
            l4[12] = 5 << 4;
            l4[13] = tcp_flags;
            l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
            l4[20..].copy_from_slice(payload);
        } else {
            l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            l4[8..].copy_from_slice(payload);
        }
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&GW_MAC);
        bytes.extend_from_slice(&POD_MAC);
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                bytes.extend_from_slice(&0x0800u16.to_be_bytes());
                let mut h = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
                h[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                let c = csum(&h, 0);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                bytes.extend_from_slice(&h);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                bytes.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut h = vec![0x60, 0, 0, 0];
                h.extend_from_slice(&(l4_len as u16).to_be_bytes());
                h.extend_from_slice(&[proto, 64]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                bytes.extend_from_slice(&h);
            }
            _ => panic!("mixed families"),
        }
        bytes.extend_from_slice(&l4);
        let mut f = Frame { bytes };
        let c = f.l4_csum_expected();
        let off = f.l4_csum_off();
        f.bytes[off..off + 2].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// The same frame, addressed (L2) from `src` to `dst`.
    fn macs(mut self, dst: [u8; 6], src: [u8; 6]) -> Frame {
        self.bytes[..6].copy_from_slice(&dst);
        self.bytes[6..12].copy_from_slice(&src);
        self
    }

    fn v6(&self) -> bool {
        self.bytes[12..14] == [0x86, 0xdd]
    }
    fn l4(&self) -> usize {
        ETH + if self.v6() { 40 } else { 20 }
    }
    fn proto(&self) -> u8 {
        if self.v6() {
            self.bytes[ETH + 6]
        } else {
            self.bytes[ETH + 9]
        }
    }
    fn l4_csum_off(&self) -> usize {
        self.l4() + if self.proto() == PROTO_TCP { 16 } else { 6 }
    }
    fn addrs(&self) -> (IpAddr, IpAddr) {
        let b = &self.bytes;
        if self.v6() {
            let s: [u8; 16] = b[ETH + 8..ETH + 24].try_into().unwrap();
            let d: [u8; 16] = b[ETH + 24..ETH + 40].try_into().unwrap();
            (IpAddr::from(s), IpAddr::from(d))
        } else {
            let s: [u8; 4] = b[ETH + 12..ETH + 16].try_into().unwrap();
            let d: [u8; 4] = b[ETH + 16..ETH + 20].try_into().unwrap();
            (IpAddr::from(s), IpAddr::from(d))
        }
    }
    fn ports(&self) -> (u16, u16) {
        let l4 = self.l4();
        let b = &self.bytes;
        (
            u16::from_be_bytes([b[l4], b[l4 + 1]]),
            u16::from_be_bytes([b[l4 + 2], b[l4 + 3]]),
        )
    }
    /// The L4 checksum recomputed from scratch with the checksum field zeroed.
    fn l4_csum_expected(&self) -> u16 {
        let l4 = self.l4();
        let mut seg = self.bytes[l4..].to_vec();
        let off = self.l4_csum_off() - l4;
        seg[off] = 0;
        seg[off + 1] = 0;
        let mut pseudo = Vec::new();
        if self.v6() {
            pseudo.extend_from_slice(&self.bytes[ETH + 8..ETH + 40]);
            pseudo.extend_from_slice(&(seg.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, self.proto()]);
        } else {
            pseudo.extend_from_slice(&self.bytes[ETH + 12..ETH + 20]);
            pseudo.extend_from_slice(&[0, self.proto()]);
            pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        }
        csum(&seg, sum16(&pseudo, 0))
    }
    fn assert_checksums(&self) {
        if !self.v6() {
            assert_eq!(sum16(&self.bytes[ETH..ETH + 20], 0), 0xffff, "IPv4 header checksum");
        }
        let off = self.l4_csum_off();
        let got = u16::from_be_bytes([self.bytes[off], self.bytes[off + 1]]);
        assert_eq!(got, self.l4_csum_expected(), "L4 checksum");
    }
}

struct Dp {
    ebpf: aya::Ebpf,
    maps: Maps,
}

impl Dp {
    fn new() -> Dp {
        let mut ebpf = loader::load(&DatapathConfig::default(), None).expect("load datapath");
        let maps = Maps::take(&mut ebpf, DatapathConfig::default().maglev_table_size).unwrap();
        Dp { ebpf, maps }
    }

    /// Run one program on a frame: (verdict, frame out).
    fn run(&self, prog: &str, f: &Frame) -> (u32, Frame) {
        let p: &SchedClassifier = self.ebpf.program(prog).unwrap().try_into().unwrap();
        let mut out = vec![0u8; f.bytes.len() + 64];
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(&f.bytes),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .unwrap();
        out.truncate(r.data_size_out as usize);
        (r.return_value, Frame { bytes: out })
    }

    /// A pod at `addr` on the test-run device (loopback, ifindex 1).
    fn pod(&mut self, addr: &str) {
        self.maps.add_endpoint(ip(addr), 1, POD_MAC, 7).unwrap();
    }

    fn service(&mut self, vip: &str, port: u16, proto: u8, backends: &[(u32, &str, u16)]) {
        self.service_with(vip, port, proto, backends, SVC_ALG_RANDOM);
    }

    fn service_with(&mut self, vip: &str, port: u16, proto: u8, backends: &[(u32, &str, u16)], algorithm: u8) {
        self.service_full(vip, port, proto, backends, algorithm, false);
    }

    fn service_full(
        &mut self,
        vip: &str,
        port: u16,
        proto: u8,
        backends: &[(u32, &str, u16)],
        algorithm: u8,
        reject: bool,
    ) {
        self.maps
            .upsert_service(&ServiceSpec {
                vip: ip(vip),
                port,
                proto,
                // One id per (port, proto), as the agent and sluicectl give them.
                rev_nat_id: (u32::from(port) << 8) | u32::from(proto),
                algorithm,
                affinity_timeout_secs: 0,
                reject,
                backends: backends.iter().map(|(id, a, p)| (*id, ip(a), *p, true)).collect(),
            })
            .unwrap();
    }
}

const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;
const TCP_ACK: u8 = 0x10;

/// Client pod -> VIP (DNAT at egress), backend -> client (reverse NAT at ingress).
fn round_trip(client: &str, vip: &str, backend: &str, proto: u8) {
    let mut dp = Dp::new();
    dp.pod(client);
    dp.service(vip, 80, proto, &[(11, backend, 8080)]);

    let syn = Frame::new(client, vip, 40000, 80, proto, SYN, b"hello");
    syn.assert_checksums();
    let (verdict, out) = dp.run(EGRESS, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out.addrs(), (ip(client), ip(backend)), "DNAT to the backend");
    assert_eq!(out.ports(), (40000, 8080));
    out.assert_checksums();
    assert_eq!(out.bytes[out.bytes.len() - 5..], *b"hello", "payload untouched");
    assert_eq!(dp.maps.count(Reason::ServiceTranslated, Direction::Egress).unwrap(), 1);

    // Both conntrack entries exist and name the backend.
    let p = |x: u16| x.to_be();
    let svc_key = CtKey {
        saddr: addr(ip(client)),
        daddr: addr(ip(vip)),
        sport: p(40000),
        dport: p(80),
        proto,
        kind: CT_SERVICE,
        pad0: 0,
    };
    let flow_key = CtKey {
        daddr: addr(ip(backend)),
        dport: p(8080),
        kind: CT_FLOW,
        ..svc_key
    };
    assert_eq!(dp.maps.ct.get(&svc_key, 0).unwrap().backend_id, 11);
    assert_eq!(dp.maps.ct.get(&flow_key, 0).unwrap().state, CT_NEW);

    // The same connection keeps its backend even after the service changes.
    dp.service(vip, 80, proto, &[(12, backend, 9090)]);
    let (_, again) = dp.run(EGRESS, &syn);
    assert_eq!(again.ports(), (40000, 8080), "chosen once per connection");

    let reply = Frame::new(backend, client, 8080, 40000, proto, SYN_ACK, b"world").macs(POD_MAC, BACKEND_MAC);
    let (verdict, out) = dp.run(INGRESS, &reply);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out.addrs(), (ip(vip), ip(client)), "reply comes from the VIP");
    assert_eq!(out.ports(), (80, 40000));
    out.assert_checksums();
    assert_eq!(dp.maps.count(Reason::ReplyTranslated, Direction::Ingress).unwrap(), 1);
    assert_eq!(dp.maps.ct.get(&flow_key, 0).unwrap().state, CT_ESTABLISHED);
    let svc_ct = dp.maps.ct.get(&svc_key, 0).unwrap();
    assert_eq!(svc_ct.state, CT_ESTABLISHED);
    assert_eq!(
        (svc_ct.nh_mac, svc_ct.nh_ifindex),
        (BACKEND_MAC, 1),
        "the reply taught the next hop"
    );

    // Once the backend has answered, the client's packets are addressed to
    // it at once and leave as they are (no neighbour lookup, no second pass).
    let ack = Frame::new(client, vip, 40000, 80, proto, TCP_ACK, b"more");
    let (verdict, out) = dp.run(EGRESS, &ack);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        out.bytes[..12],
        [BACKEND_MAC, POD_MAC].concat(),
        "to the learned next hop"
    );
    assert_eq!(out.addrs(), (ip(client), ip(backend)));
    assert_eq!(out.ports(), (40000, 8080));
    out.assert_checksums();

    // The path changes (the backend is now reached through a router): the
    // first reply that shows it moves the next hop.
    let (_, _) = dp.run(INGRESS, &reply.macs(POD_MAC, ROUTER_MAC));
    let (verdict, out) = dp.run(EGRESS, &ack);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out.bytes[..6], ROUTER_MAC, "the next hop follows the replies");

    // Traffic that is no reply to a translated flow passes untouched.
    let other = Frame::new(backend, client, 8080, 40001, proto, SYN_ACK, b"x");
    let (verdict, out) = dp.run(INGRESS, &other);
    assert_eq!((verdict, out.bytes), (TC_ACT_OK, other.bytes));
}

#[test]
fn tcp_v4_dnat_and_reverse_nat() {
    if root("tcp_v4_dnat_and_reverse_nat") {
        round_trip("10.244.1.5", "10.96.0.10", "10.244.2.7", PROTO_TCP);
    }
}

#[test]
fn udp_v4_dnat_and_reverse_nat() {
    if root("udp_v4_dnat_and_reverse_nat") {
        round_trip("10.244.1.5", "10.96.0.10", "10.244.2.7", PROTO_UDP);
    }
}

#[test]
fn tcp_v6_dnat_and_reverse_nat() {
    if root("tcp_v6_dnat_and_reverse_nat") {
        round_trip("fd00:244::1:5", "fd00:96::a", "fd00:244::2:7", PROTO_TCP);
    }
}

#[test]
fn udp_v6_dnat_and_reverse_nat() {
    if root("udp_v6_dnat_and_reverse_nat") {
        round_trip("fd00:244::1:5", "fd00:96::a", "fd00:244::2:7", PROTO_UDP);
    }
}

#[test]
fn udp_v4_without_checksum_keeps_none() {
    if !root("udp_v4_without_checksum_keeps_none") {
        return;
    }
    let mut dp = Dp::new();
    dp.pod("10.244.1.5");
    dp.service("10.96.0.10", 53, PROTO_UDP, &[(1, "10.244.2.7", 5353)]);
    let mut f = Frame::new("10.244.1.5", "10.96.0.10", 40000, 53, PROTO_UDP, 0, b"q");
    let off = f.l4_csum_off();
    f.bytes[off..off + 2].copy_from_slice(&[0, 0]);
    let (verdict, out) = dp.run(EGRESS, &f);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out.ports(), (40000, 5353));
    assert_eq!(
        out.bytes[off..off + 2],
        [0, 0],
        "a zero UDP checksum means none, and stays none"
    );
    assert_eq!(sum16(&out.bytes[ETH..ETH + 20], 0), 0xffff);
}

#[test]
fn drops_carry_their_reason() {
    if !root("drops_carry_their_reason") {
        return;
    }
    let mut dp = Dp::new();
    dp.pod("10.244.1.5");
    dp.service("10.96.0.10", 80, PROTO_TCP, &[(1, "10.244.2.7", 8080)]);
    dp.service("10.96.0.11", 80, PROTO_TCP, &[]);
    let cases = [
        (
            "known VIP, unknown port",
            Frame::new("10.244.1.5", "10.96.0.10", 40000, 81, PROTO_TCP, SYN, b""),
            Reason::DropUnknownPort,
        ),
        (
            "known VIP, other protocol",
            Frame::new("10.244.1.5", "10.96.0.10", 40000, 80, PROTO_UDP, 0, b""),
            Reason::DropUnknownPort,
        ),
        (
            "service without backends",
            Frame::new("10.244.1.5", "10.96.0.11", 40000, 80, PROTO_TCP, SYN, b""),
            Reason::DropNoBackend,
        ),
        (
            "spoofed source",
            Frame::new("10.244.1.99", "10.244.2.7", 40000, 80, PROTO_TCP, SYN, b""),
            Reason::DropSourceAddress,
        ),
    ];
    for (what, f, reason) in cases {
        let before = dp.maps.count(reason, Direction::Egress).unwrap();
        let (verdict, _) = dp.run(EGRESS, &f);
        assert_eq!(verdict, TC_ACT_SHOT, "{what}");
        assert_eq!(
            dp.maps.count(reason, Direction::Egress).unwrap(),
            before + 1,
            "{what}: {}",
            reason.name()
        );
    }
    // Pod-to-pod traffic that is no Service passes untouched and is counted as forwarded.
    let direct = Frame::new("10.244.1.5", "10.244.2.7", 40000, 80, PROTO_TCP, SYN, b"");
    let (verdict, out) = dp.run(EGRESS, &direct);
    assert_eq!((verdict, out.bytes), (TC_ACT_OK, direct.bytes));
    assert_eq!(dp.maps.count(Reason::Forwarded, Direction::Egress).unwrap(), 1);
    // A truncated TCP header is malformed.
    let mut cut = Frame::new("10.244.1.5", "10.96.0.10", 40000, 80, PROTO_TCP, SYN, b"");
    cut.bytes.truncate(ETH + 20 + 6);
    assert_eq!(dp.run(EGRESS, &cut).0, TC_ACT_SHOT);
    assert_eq!(dp.maps.count(Reason::DropMalformed, Direction::Egress).unwrap(), 1);
}

/// Random selection spreads new connections; Maglev sends one flow to the
/// same backend every time its conntrack entry is gone (as on another node).
#[test]
fn random_and_maglev_selection() {
    if !root("random_and_maglev_selection") {
        return;
    }
    let backends = [
        (1, "10.244.2.7", 8080),
        (2, "10.244.3.7", 8080),
        (3, "10.244.4.7", 8080),
    ];
    let flush = |dp: &mut Dp| {
        let keys: Vec<CtKey> = dp.maps.ct.keys().map(Result::unwrap).collect();
        for k in keys {
            dp.maps.ct.remove(&k).unwrap();
        }
    };
    for alg in [SVC_ALG_RANDOM, SVC_ALG_MAGLEV] {
        let mut dp = Dp::new();
        dp.pod("10.244.1.5");
        dp.service_with("10.96.0.10", 80, PROTO_TCP, &backends, alg);
        let mut per_backend = std::collections::HashMap::new();
        let mut changed = 0;
        for sport in 40000..40300u16 {
            let syn = Frame::new("10.244.1.5", "10.96.0.10", sport, 80, PROTO_TCP, SYN, b"");
            let first = dp.run(EGRESS, &syn).1.addrs().1;
            flush(&mut dp);
            let second = dp.run(EGRESS, &syn).1.addrs().1;
            flush(&mut dp);
            changed += usize::from(first != second);
            *per_backend.entry(first).or_insert(0) += 1;
        }
        assert_eq!(per_backend.len(), 3, "alg {alg}: every backend chosen: {per_backend:?}");
        assert!(
            per_backend.values().all(|n| *n >= 60),
            "alg {alg}: spread {per_backend:?}"
        );
        if alg == SVC_ALG_MAGLEV {
            assert_eq!(changed, 0, "Maglev: a flow maps to one backend, conntrack or not");
        } else {
            assert!(changed > 100, "random: re-selection differs often, {changed} of 300");
        }
    }
}

/// ClientIP affinity: new connections of one client go to one backend
/// while the entry is fresh; another client may land elsewhere.
#[test]
fn session_affinity_pins_a_client() {
    if !root("session_affinity_pins_a_client") {
        return;
    }
    let mut dp = Dp::new();
    dp.pod("10.244.1.5");
    dp.maps
        .upsert_service(&ServiceSpec {
            vip: ip("10.96.0.10"),
            port: 80,
            proto: PROTO_TCP,
            rev_nat_id: 1,
            algorithm: SVC_ALG_RANDOM,
            affinity_timeout_secs: 300,
            reject: false,
            backends: vec![
                (1, ip("10.244.2.7"), 8080, true),
                (2, ip("10.244.3.7"), 8080, true),
                (3, ip("10.244.4.7"), 8080, true),
            ],
        })
        .unwrap();
    let dst = |sport| {
        dp.run(
            EGRESS,
            &Frame::new("10.244.1.5", "10.96.0.10", sport, 80, PROTO_TCP, SYN, b""),
        )
        .1
        .addrs()
        .1
    };
    let first = dst(40000);
    for sport in 40001..40050 {
        assert_eq!(
            dst(sport),
            first,
            "new connection {sport} follows the client's affinity"
        );
    }
}

/// An ICMP(v6) "port unreachable" from `from` to `to`, quoting `quoted`
/// (an IP packet, as the sender of the error received it).
fn port_unreachable(from: &str, to: &str, quoted: &[u8]) -> Frame {
    let (from, to) = (ip(from), ip(to));
    let v6 = from.is_ipv6();
    let mut icmp = if v6 {
        vec![1, 4, 0, 0, 0, 0, 0, 0]
    } else {
        vec![3, 3, 0, 0, 0, 0, 0, 0]
    };
    icmp.extend_from_slice(quoted);
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&POD_MAC);
    bytes.extend_from_slice(&GW_MAC);
    match (from, to) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let c = csum(&icmp, 0);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            bytes.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut h = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, 1, 0, 0];
            h[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let c = csum(&h, 0);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            bytes.extend_from_slice(&h);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 58]);
            let c = csum(&icmp, sum16(&pseudo, 0));
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            bytes.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut h = vec![0x60, 0, 0, 0];
            h.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
            h.extend_from_slice(&[58, 64]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            bytes.extend_from_slice(&h);
        }
        _ => panic!("mixed families"),
    }
    bytes.extend_from_slice(&icmp);
    Frame { bytes }
}

impl Frame {
    /// The ICMP checksum is right (ICMPv6: with its pseudo header).
    fn assert_icmp_checksum(&self) {
        let l4 = self.l4();
        let msg = &self.bytes[l4..];
        let acc = if self.v6() {
            let mut pseudo = self.bytes[ETH + 8..ETH + 40].to_vec();
            pseudo.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 58]);
            sum16(&pseudo, 0)
        } else {
            assert_eq!(
                sum16(&self.bytes[ETH..ETH + 20], 0),
                0xffff,
                "outer IPv4 header checksum"
            );
            0
        };
        assert_eq!(sum16(msg, acc), 0xffff, "ICMP checksum");
    }

    /// The packet quoted by an ICMP error, as a frame of its own.
    fn quoted(&self) -> Frame {
        let mut bytes = self.bytes[..ETH].to_vec();
        bytes.extend_from_slice(&self.bytes[self.l4() + 8..]);
        Frame { bytes }
    }
}

fn icmp_error_translation(client: &str, vip: &str, backend: &str) {
    let mut dp = Dp::new();
    dp.pod(client);
    dp.service(vip, 53, PROTO_UDP, &[(3, backend, 5353)]);
    let (_, sent) = dp.run(EGRESS, &Frame::new(client, vip, 40000, 53, PROTO_UDP, 0, b"query"));
    assert_eq!(sent.addrs(), (ip(client), ip(backend)));

    // The backend's port is closed: its stack quotes the packet it got.
    let err = port_unreachable(backend, client, &sent.bytes[ETH..]);
    err.assert_icmp_checksum();
    let (verdict, out) = dp.run(INGRESS, &err);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out.addrs(), (ip(vip), ip(client)), "the error comes from the VIP");
    out.assert_icmp_checksum();
    let q = out.quoted();
    assert_eq!(q.addrs(), (ip(client), ip(vip)), "the quote names the VIP");
    assert_eq!(q.ports(), (40000, 53));
    if !q.v6() {
        assert_eq!(sum16(&q.bytes[ETH..ETH + 20], 0), 0xffff, "quoted IPv4 header checksum");
    }
    assert_eq!(
        dp.maps.count(Reason::IcmpErrorTranslated, Direction::Ingress).unwrap(),
        1
    );

    // A router on the way complains: the outer source stays the router's.
    let router = if client.contains(':') {
        "fd00:244::1"
    } else {
        "10.244.0.1"
    };
    let (_, out) = dp.run(INGRESS, &port_unreachable(router, client, &sent.bytes[ETH..]));
    assert_eq!(out.addrs(), (ip(router), ip(client)));
    assert_eq!(out.quoted().addrs(), (ip(client), ip(vip)));
    out.assert_icmp_checksum();

    // An error about a flow we never translated passes untouched.
    let other = Frame::new(client, backend, 40001, 5353, PROTO_UDP, 0, b"direct");
    let err = port_unreachable(backend, client, &other.bytes[ETH..]);
    let (verdict, out) = dp.run(INGRESS, &err);
    assert_eq!((verdict, out.bytes), (TC_ACT_OK, err.bytes));
}

#[test]
fn icmp_v4_error_about_a_service_flow_is_translated() {
    if root("icmp_v4_error_about_a_service_flow_is_translated") {
        icmp_error_translation("10.244.1.5", "10.96.0.10", "10.244.2.7");
    }
}

#[test]
fn icmp_v6_error_about_a_service_flow_is_translated() {
    if root("icmp_v6_error_about_a_service_flow_is_translated") {
        icmp_error_translation("fd00:244::1:5", "fd00:96::a", "fd00:244::2:7");
    }
}

fn hairpin(pod: &str, vip: &str, hairpin_addr: &str) {
    let mut dp = Dp::new();
    dp.pod(pod);
    dp.service(vip, 80, PROTO_TCP, &[(4, pod, 8080)]);
    let (verdict, out) = dp.run(EGRESS, &Frame::new(pod, vip, 40000, 80, PROTO_TCP, SYN, b"me"));
    assert_eq!(verdict, TC_ACT_REDIRECT, "turned around into the pod");
    assert_eq!(out.addrs(), (ip(hairpin_addr), ip(pod)));
    assert_eq!(out.ports(), (40000, 8080));
    assert_eq!(out.bytes[..6], POD_MAC, "addressed to the pod");
    out.assert_checksums();

    // The pod answers the hairpin address; its reply is turned around too.
    let reply = Frame::new(pod, hairpin_addr, 8080, 40000, PROTO_TCP, SYN_ACK, b"you");
    let (verdict, out) = dp.run(EGRESS, &reply);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out.addrs(), (ip(vip), ip(pod)), "the reply comes from the VIP");
    assert_eq!(out.ports(), (80, 40000));
    assert_eq!(out.bytes[..6], POD_MAC);
    out.assert_checksums();
    assert_eq!(dp.maps.count(Reason::Hairpin, Direction::Egress).unwrap(), 2);
}

#[test]
fn hairpin_v4_turns_a_pod_to_itself_around() {
    if root("hairpin_v4_turns_a_pod_to_itself_around") {
        hairpin("10.244.1.5", "10.96.0.10", "169.254.42.1");
    }
}

#[test]
fn hairpin_v6_turns_a_pod_to_itself_around() {
    if root("hairpin_v6_turns_a_pod_to_itself_around") {
        hairpin("fd00:244::1:5", "fd00:96::a", "fd5c:5c5c::1");
    }
}

/// With reject on, a packet that finds no backend, or a port the VIP does
/// not serve, comes back to the client as ICMP port unreachable from the
/// VIP, quoting what the client sent, so its socket fails at once.
fn reject(client: &str, vip: &str) {
    let mut dp = Dp::new();
    dp.pod(client);
    dp.service_full(vip, 80, PROTO_TCP, &[], SVC_ALG_RANDOM, true);
    let v6 = client.contains(':');
    let quote_len = if v6 { 48 } else { 28 };
    let cases = [
        (
            "SYN to a service without backends (the frame grows)",
            Frame::new(client, vip, 40000, 80, PROTO_TCP, SYN, b""),
            Reason::DropNoBackend,
        ),
        (
            "datagram to a port the VIP does not serve (the frame shrinks)",
            Frame::new(client, vip, 40001, 53, PROTO_UDP, 0, &[7u8; 300]),
            Reason::DropUnknownPort,
        ),
    ];
    for (what, f, reason) in cases {
        let (verdict, out) = dp.run(EGRESS, &f);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{what}: turned around into the pod");
        assert_eq!(out.bytes[..6], POD_MAC, "{what}: addressed to the pod");
        assert_eq!(out.bytes[6..12], GW_MAC, "{what}: from its gateway");
        assert_eq!(out.proto(), if v6 { 58 } else { 1 }, "{what}");
        assert_eq!(out.addrs(), (ip(vip), ip(client)), "{what}: from the VIP");
        let l4 = out.l4();
        let want = if v6 { [1, 4] } else { [3, 3] };
        assert_eq!(out.bytes[l4..l4 + 2], want, "{what}: port unreachable");
        assert_eq!(out.bytes.len(), l4 + 8 + quote_len, "{what}: header and quote only");
        assert_eq!(
            out.bytes[l4 + 8..],
            f.bytes[ETH..ETH + quote_len],
            "{what}: quotes the client's packet"
        );
        let total = if v6 {
            out.bytes.len() - ETH - 40
        } else {
            out.bytes.len() - ETH
        };
        let len_field = if v6 { ETH + 4 } else { ETH + 2 };
        assert_eq!(
            u16::from_be_bytes([out.bytes[len_field], out.bytes[len_field + 1]]) as usize,
            total,
            "{what}: length field"
        );
        out.assert_icmp_checksum();
        assert_eq!(dp.maps.count(reason, Direction::Egress).unwrap(), 1, "{what}");
    }
    assert_eq!(dp.maps.count(Reason::Rejected, Direction::Egress).unwrap(), 2);
    // The answer passes the pod's ingress as an ordinary ICMP error: it is
    // about no flow that was translated.
    let (_, answer) = dp.run(EGRESS, &Frame::new(client, vip, 40002, 80, PROTO_TCP, SYN, b""));
    let (verdict, out) = dp.run(INGRESS, &answer);
    assert_eq!((verdict, out.bytes), (TC_ACT_OK, answer.bytes));
}

#[test]
fn reject_v4_answers_with_icmp_port_unreachable() {
    if root("reject_v4_answers_with_icmp_port_unreachable") {
        reject("10.244.1.5", "10.96.0.10");
    }
}

#[test]
fn reject_v6_answers_with_icmp_port_unreachable() {
    if root("reject_v6_answers_with_icmp_port_unreachable") {
        reject("fd00:244::1:5", "fd00:96::a");
    }
}

/// The VIP filter counts each VIP once, however many ports it serves, and
/// forgets it with its last port; the backend filter counts backend
/// entries by address; the programs trust a zero.
#[test]
fn address_filters_count_and_are_consulted() {
    if !root("address_filters_count_and_are_consulted") {
        return;
    }
    let mut dp = Dp::new();
    dp.pod("10.244.1.5");
    let vip = ip("10.96.0.10");
    dp.service("10.96.0.10", 80, PROTO_TCP, &[(1, "10.244.2.7", 8080)]);
    dp.service("10.96.0.10", 53, PROTO_UDP, &[(2, "10.244.2.7", 5353)]);
    dp.service("10.96.0.10", 80, PROTO_TCP, &[(1, "10.244.2.7", 8080)]);
    let backend = ip("10.244.2.7");
    assert_eq!(
        dp.maps.vip_filter_count(vip).unwrap(),
        1,
        "one VIP, two ports, one rewrite"
    );
    assert_eq!(dp.maps.backend_filter_count(backend).unwrap(), 2, "two backend entries");
    assert!(dp.maps.delete_service(vip, 53, PROTO_UDP).unwrap());
    assert_eq!(dp.maps.vip_filter_count(vip).unwrap(), 1, "a port is left");
    assert_eq!(
        dp.maps.backend_filter_count(backend).unwrap(),
        1,
        "its backend went with it"
    );

    let syn = Frame::new("10.244.1.5", "10.96.0.10", 40000, 80, PROTO_TCP, SYN, b"");
    assert_eq!(dp.run(EGRESS, &syn).0, TC_ACT_REDIRECT);
    // A reply is looked up only when its source may be a backend.
    let reply = Frame::new("10.244.2.7", "10.244.1.5", 8080, 40000, PROTO_TCP, SYN_ACK, b"");
    let bslot = vip_slot(&addr(backend));
    let bword = dp.maps.backend_filter.get(&(bslot / 8), 0).unwrap();
    dp.maps
        .backend_filter
        .set(bslot / 8, bword & !(0xff << ((bslot % 8) * 8)), 0)
        .unwrap();
    let (verdict, out) = dp.run(INGRESS, &reply);
    assert_eq!((verdict, out.bytes), (TC_ACT_OK, reply.bytes.clone()), "not looked up");
    dp.maps.backend_filter.set(bslot / 8, bword, 0).unwrap();
    assert_eq!(dp.run(INGRESS, &reply).1.addrs(), (vip, ip("10.244.1.5")), "translated");
    // With its slot zeroed the VIP is not looked up at all.
    let slot = vip_slot(&addr(vip));
    let word = dp.maps.vip_filter.get(&(slot / 8), 0).unwrap();
    dp.maps
        .vip_filter
        .set(slot / 8, word & !(0xff << ((slot % 8) * 8)), 0)
        .unwrap();
    let other = Frame::new("10.244.1.5", "10.96.0.10", 40001, 80, PROTO_TCP, SYN, b"");
    let (verdict, out) = dp.run(EGRESS, &other);
    assert_eq!((verdict, out.bytes), (TC_ACT_OK, other.bytes.clone()));
    dp.maps.vip_filter.set(slot / 8, word, 0).unwrap();

    assert!(dp.maps.delete_service(vip, 80, PROTO_TCP).unwrap());
    assert_eq!(
        dp.maps.vip_filter_count(vip).unwrap(),
        0,
        "the last port took the VIP out"
    );
    assert_eq!(dp.maps.backend_filter_count(backend).unwrap(), 0);
    let (verdict, out) = dp.run(EGRESS, &other);
    assert_eq!((verdict, out.bytes), (TC_ACT_OK, other.bytes));
}
